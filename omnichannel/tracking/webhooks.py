"""Provider webhooks that anymail does not cover: Telegram updates, SMS delivery reports.

Both authenticate the provider before reading anything (a shared secret header for Telegram,
Twilio's request signature for SMS) and answer 403 when that fails, changing nothing.
"""

from __future__ import annotations

import json
import logging

from django.core.exceptions import PermissionDenied
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseForbidden,
)
from django.urls import reverse
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from ..channels.registry import get_channel
from ..channels.sms import SmsChannel
from ..channels.telegram import TelegramChannel, handle_update
from ..conf import app_settings
from ..exceptions import ConfigurationError
from . import links

logger = logging.getLogger("omnichannel.tracking")

TELEGRAM_SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105  (a header name)


def _telegram_channel(name: str | None) -> TelegramChannel:
    """The channel named by ``?channel=``, else the first TelegramChannel configured."""
    if name:
        try:
            channel = get_channel(name)
        except ConfigurationError as exc:
            raise Http404("no such channel") from exc
        if isinstance(channel, TelegramChannel):
            return channel
        raise Http404("not a Telegram channel")
    for configured in app_settings.CHANNELS:
        try:
            channel = get_channel(configured)
        except ConfigurationError:
            # Another channel's broken settings must not take Telegram's webhook down.
            continue
        if isinstance(channel, TelegramChannel):
            return channel
    raise Http404("no Telegram channel is configured")


@csrf_exempt
@require_POST
def telegram_update(request: HttpRequest) -> HttpResponse:
    """Bot API webhook: /start <token> links a chat, /stop withdraws consent.

    Every authenticated update gets a 200, even one we ignore: Telegram retries anything
    else for hours and holds back the updates behind it.
    """
    channel = _telegram_channel(request.GET.get("channel"))
    if not channel.webhook_secret:
        logger.error(
            "telegram webhook refused: set WEBHOOK_SECRET in the options of channel %r and run "
            "omnichannel_telegram_webhook",
            channel.name,
        )
        return HttpResponseForbidden("webhook secret not configured")
    given = request.headers.get(TELEGRAM_SECRET_HEADER, "")
    if not constant_time_compare(given, channel.webhook_secret):
        logger.warning("telegram webhook: wrong or missing secret token header")
        return HttpResponseForbidden("wrong secret token")
    try:
        update = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        return HttpResponseBadRequest("the body is not JSON")
    if not isinstance(update, dict):
        return HttpResponseBadRequest("an Update is a JSON object")
    outcome = handle_update(channel, update, now=timezone.now())
    logger.debug("telegram update %s: %s", update.get("update_id"), outcome)
    return HttpResponse(status=200)


@csrf_exempt
@require_POST
def sms_status(request: HttpRequest, channel: str) -> HttpResponse:
    """Delivery reports of an SMS channel's backend (Twilio status callbacks)."""
    try:
        sms_channel = get_channel(channel)
    except ConfigurationError as exc:
        raise Http404("no such channel") from exc
    if not isinstance(sms_channel, SmsChannel):
        raise Http404("not an SMS channel")
    url = links.absolute(reverse("omnichannel:sms-status", args=[channel]))
    if request.META.get("QUERY_STRING"):
        url += "?" + request.META["QUERY_STRING"]
    try:
        backend = sms_channel.get_backend()
        reports = backend.parse_status_report(request, url=url)
    except NotImplementedError as exc:
        raise Http404("this SMS backend takes no delivery reports") from exc
    except ConfigurationError:
        logger.exception("sms channel %r cannot check delivery reports", channel)
        return HttpResponseForbidden("channel not configured for delivery reports")
    except PermissionDenied:
        logger.warning("sms status callback for %r refused: bad signature", channel)
        return HttpResponseForbidden("bad signature")
    except ValueError as exc:
        return HttpResponseBadRequest(str(exc))
    sms_channel.record_status_reports(
        reports, now=timezone.now(), reference=request.GET.get("m", "")[:64]
    )
    return HttpResponse(status=200)
