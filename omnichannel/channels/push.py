"""Push channels through django-push-notifications: mobile (FCM, APNs) and web push.

A person's devices are the active devices of django-push-notifications whose ``user`` is the
profile's user, plus the active devices without a user whose registration id is one of the
profile's ``device`` identities (an app user who never logged in). Each message goes to all of
them; the channel bills per device (``units``).

Providers are called through the libraries django-push-notifications uses, with its settings
(``PUSH_NOTIFICATIONS_SETTINGS``, one or many application ids):

* FCM: one ``firebase_admin.messaging.Message`` per device, sent with ``messaging.send_each``
  in calls of at most 500 (FCM's limit; django-push-notifications defaults to 1000) across all
  the messages of a batch, on the Firebase app push-notifications picks for the application.
* APNs: aioapns through push-notifications' ``apns_async`` client and request builder.
* Web push: pywebpush with push-notifications' subscription info and VAPID settings.

A device the provider reports as gone (FCM UNREGISTERED, APNs Unregistered/BadDeviceToken, web
push 404/410) is deactivated, as push-notifications does. A message succeeds when at least one
device took it; per-device results are kept in ``Message.data["devices"]``. See docs/channels.md.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db.models import Count, Model, Q, QuerySet
from django.dispatch import receiver
from django.urls import reverse

from ..exceptions import (
    ConfigurationError,
    PermanentChannelError,
    RateLimited,
    TemporaryChannelError,
)
from ..profiles.models import Identity, IdentityKind
from ..tracking import links
from .base import BaseChannel, SendResult

if TYPE_CHECKING:
    from decimal import Decimal

    from ..profiles.models import CustomerProfile
    from .models import Message

logger = logging.getLogger("omnichannel.channels")

#: Most messages FCM's HTTP v1 API takes in one ``send_each`` call.
FCM_MAX_PER_CALL = 500

#: What happened to one device. Stored in Message.data["devices"][i]["result"].
OK = "ok"
DEACTIVATED = "deactivated"  # the provider says the token is gone: device.active = False
REJECTED = "rejected"  # refused for good (payload, credentials), device kept
TEMPORARY = "temporary"  # timeout, 5xx: worth another try
RATE_LIMITED = "rate_limited"  # 429 / QUOTA_EXCEEDED

#: APNs reasons that mean the token is dead (the list push-notifications deactivates on).
APNS_DEAD_TOKEN_REASONS = ("Unregistered", "BadDeviceToken", "DeviceTokenNotForTopic")


@dataclass
class DeviceSend:
    """One device of one message: the provider payload and what the provider answered."""

    kind: str  # "fcm", "apns" or "webpush"
    device: Any
    payload: Any  # messaging.Message, aioapns NotificationRequest, or the web push JSON
    application_id: str | None = None
    result: str = ""
    provider_id: str = ""
    error: str = ""
    retry_after: float | None = None

    def succeed(self, provider_id: str) -> None:
        self.result, self.provider_id = OK, provider_id

    def fail(self, result: str, error: str, *, retry_after: float | None = None) -> None:
        self.result, self.error, self.retry_after = result, error[:500], retry_after

    def record(self) -> dict[str, Any]:
        """The entry stored in Message.data["devices"]."""
        entry: dict[str, Any] = {"type": self.kind, "id": self.device.pk, "result": self.result}
        if self.provider_id:
            entry["provider_id"] = self.provider_id
        if self.error:
            entry["error"] = self.error
        return entry


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds; None when absent or an HTTP date (the base pause applies)."""
    try:
        return max(float(value), 0.0) if value else None
    except ValueError:
        return None


def _http_status(response: Any) -> int | None:
    return getattr(response, "status_code", None) if response is not None else None


class BasePushChannel(BaseChannel):
    """What mobile and web push share: devices, content, batching and the per-message verdict."""

    template_parts: ClassVar[dict[str, bool]] = {
        "title.txt": True,
        "body.txt": True,
        "url.txt": False,
        "image.txt": False,
    }
    #: Messages per send_batch; their devices go to FCM in calls of at most 500.
    batch_size: ClassVar[int] = 200
    #: FCM and web push services report no deliveries: attribution counts the send.
    reports_deliveries: ClassVar[bool] = False
    #: OPTIONS this backend accepts (OUTBOX is taken by BaseChannel).
    option_names: ClassVar[frozenset[str]] = frozenset({"APPLICATION_ID", "TTL", "TIMEOUT"})
    #: Default time to live of a notification the device cannot take at once (seconds).
    default_ttl: ClassVar[int] = 60 * 60 * 24

    def __init__(self, name: str, *, cost: Decimal, currency: str, options: dict[str, Any]) -> None:
        super().__init__(name, cost=cost, currency=currency, options=options)
        unknown = set(self.options) - self.option_names
        if unknown:
            raise ConfigurationError(
                f"OMNICHANNEL['CHANNELS'][{name!r}]['OPTIONS'] has unknown keys {sorted(unknown)}"
                f" (known: {sorted(self.option_names | {'OUTBOX'})})"
            )
        self.application_id: str | None = self.options.get("APPLICATION_ID") or None
        try:
            self.ttl = int(self.options.get("TTL", self.default_ttl))
            timeout = self.options.get("TIMEOUT")
            self.timeout: float | None = float(timeout) if timeout is not None else None
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"{name}: TTL and TIMEOUT must be numbers ({exc})") from exc
        if self.ttl < 0:
            raise ConfigurationError(f"{name}: TTL must not be negative")

    # --- devices -------------------------------------------------------------------------------

    def device_models(self) -> list[tuple[str, QuerySet[Any]]]:
        """(kind, queryset of candidate devices) for each provider of this channel."""
        raise NotImplementedError(f"{type(self).__name__} must implement device_models")

    @staticmethod
    def owned_by(queryset: QuerySet[Any], profile: CustomerProfile) -> QuerySet[Any]:
        """Active devices of ``profile``: its user's, and user-less ones named by its identities.

        A device registered to another user is never reached through a device identity: the
        phone now belongs to that account.
        """
        tokens = Identity.objects.filter(profile=profile, kind=IdentityKind.DEVICE).values("value")
        by_identity = Q(registration_id__in=tokens, user__isnull=True)
        mine = Q(user_id=profile.user_id) | by_identity if profile.user_id else by_identity
        return queryset.filter(mine, active=True).order_by("pk")

    def devices(self, profile: CustomerProfile) -> list[tuple[str, Model]]:
        """(kind, device) of every active device of the person, in a stable order."""
        return [
            (kind, device)
            for kind, queryset in self.device_models()
            for device in self.owned_by(queryset, profile)
        ]

    def get_address(self, profile: CustomerProfile) -> str | None:
        """A summary of the person's devices, e.g. ``fcm:2 apns:1``; None without any."""
        counts = [
            (kind, self.owned_by(queryset, profile).count())
            for kind, queryset in self.device_models()
        ]
        summary = " ".join(f"{kind}:{count}" for kind, count in counts if count)
        return summary or None

    def get_addresses(self, profiles: Sequence[CustomerProfile]) -> dict[int, str | None]:
        """``get_address`` for many profiles: their device identities in one query, then one
        grouped count per device model (devices of their users, and user-less devices named
        by their identities)."""
        if not (
            type(self).get_address is BasePushChannel.get_address
            and type(self).owned_by is BasePushChannel.owned_by
        ):
            return super().get_addresses(profiles)
        profiles = list(profiles)
        by_user = {p.user_id: p.pk for p in profiles if p.user_id}
        by_token: dict[str, int] = dict(
            Identity.objects.filter(
                profile_id__in={p.pk for p in profiles}, kind=IdentityKind.DEVICE
            ).values_list("value", "profile_id")
        )
        counts: dict[int, list[tuple[str, int]]] = defaultdict(list)
        for kind, queryset in self.device_models():
            mine = Q(user_id__in=list(by_user))
            if by_token:
                mine |= Q(registration_id__in=list(by_token), user__isnull=True)
            per_profile: dict[int, int] = defaultdict(int)
            rows = (
                queryset.filter(mine, active=True)
                .values_list("user_id", "registration_id")
                .order_by()
                .annotate(n=Count("pk"))
            )
            for user_id, token, n in rows:
                # A device of one of the users, or a user-less one named by an identity.
                pk = by_user.get(user_id) if user_id is not None else by_token.get(token)
                if pk is not None:
                    per_profile[pk] += n
            for pk, n in per_profile.items():
                counts[pk].append((kind, n))
        return {
            p.pk: " ".join(f"{kind}:{n}" for kind, n in counts.get(p.pk, []) if n) or None
            for p in profiles
        }

    def units(self, message: Message) -> int:
        """One unit per device the message goes to."""
        if message.profile is None:
            return 0
        return len(self.devices(message.profile))

    # --- content -------------------------------------------------------------------------------

    def apply_rendered(self, message: Message, parts: dict[str, str]) -> None:
        """Store title and body; the click URL goes through our signed redirect."""
        super().apply_rendered(message, parts)
        target = message.data.pop("url", "")
        if target:
            message.data["target_url"] = links.absolute(target)
            message.data["url"] = self.tracked_url(message, target)
        image = message.data.pop("image", "")
        if image:
            message.data["image"] = links.absolute(image)

    @staticmethod
    def tracked_url(message: Message, url: str) -> str:
        """``url`` wrapped in our click redirect, unless the template already did it."""
        prefix = links.absolute(reverse("omnichannel:click", args=["-"])).rsplit("-", 1)[0]
        absolute = links.absolute(url)
        return absolute if absolute.startswith(prefix) else links.click_url(message, url)

    @staticmethod
    def content(message: Message) -> dict[str, str]:
        """Title, body, url, image and our message id (empty parts left out)."""
        content = {
            "title": message.subject,
            "body": message.body_text,
            "url": message.data.get("url", ""),
            "image": message.data.get("image", ""),
            "message_id": message.uuid.hex,
        }
        return {key: value for key, value in content.items() if value}

    # --- sending -------------------------------------------------------------------------------

    def plan(self, message: Message) -> list[DeviceSend]:
        """One DeviceSend per device of the message's person, payload built."""
        raise NotImplementedError(f"{type(self).__name__} must implement plan")

    def dispatch(self, sends: list[DeviceSend]) -> None:
        """Call the providers for all ``sends`` of a batch; fill in each result."""
        raise NotImplementedError(f"{type(self).__name__} must implement dispatch")

    def send(self, message: Message) -> str:
        return self.send_via_batch(message)

    def send_batch(self, messages: Sequence[Message]) -> list[SendResult]:
        """Send all devices of all ``messages`` in provider-sized calls; one verdict each."""
        if self.outbox:
            return super().send_batch(messages)
        plans: list[list[DeviceSend]] = []
        for message in messages:
            plans.append(self.plan(message) if message.profile is not None else [])
        self.dispatch([send for sends in plans for send in sends if not send.result])
        self.deactivate([send for sends in plans for send in sends])
        return [
            self.verdict(message, sends) for message, sends in zip(messages, plans, strict=True)
        ]

    def deactivate(self, sends: list[DeviceSend]) -> None:
        """Mark devices whose token the provider declared dead inactive (by registration id,
        as push-notifications does: a dead token is dead on every row that holds it)."""
        dead: dict[type[Model], set[str]] = defaultdict(set)
        for send in sends:
            if send.result == DEACTIVATED:
                dead[type(send.device)].add(send.device.registration_id)
        for model, tokens in dead.items():
            count = model.objects.filter(registration_id__in=tokens).update(active=False)
            logger.info("%s: deactivated %d %s devices", self.name, count, model.__name__)

    def verdict(self, message: Message, sends: list[DeviceSend]) -> SendResult:
        """Success when at least one device took it; else the least final error."""
        from .models import Message as MessageModel

        message.data["devices"] = [send.record() for send in sends]
        MessageModel.objects.filter(pk=message.pk).update(data=message.data)
        if not sends:
            return PermanentChannelError("no active push device for this person")
        accepted = [send for send in sends if send.result == OK]
        if accepted:
            return accepted[0].provider_id
        summary = "; ".join(
            f"{send.kind} device {send.device.pk}: {send.result}: {send.error}" for send in sends
        )[:1900]
        limited = [send for send in sends if send.result == RATE_LIMITED]
        if limited:
            waits = [send.retry_after for send in limited if send.retry_after is not None]
            return RateLimited(summary, retry_after=max(waits) if waits else None)
        if any(send.result == TEMPORARY for send in sends):
            return TemporaryChannelError(summary)
        return PermanentChannelError(f"all {len(sends)} devices refused it: {summary}")

    # --- outbox --------------------------------------------------------------------------------

    def outbox_payload(self, message: Message) -> dict[str, Any]:
        """The provider payloads we would have sent, per device."""
        payload: dict[str, Any] = {}
        if message.profile is None:
            return payload
        for send in self.plan(message):
            entry = {"device": send.device.pk, "application_id": send.application_id}
            entry.update(self.describe(send))
            payload.setdefault(send.kind, []).append(entry)
        return payload

    def describe(self, send: DeviceSend) -> dict[str, Any]:
        """A JSON-friendly view of one device's provider request (for the outbox)."""
        raise NotImplementedError(f"{type(self).__name__} must implement describe")


class MobilePushChannel(BasePushChannel):
    """Mobile app push: Android and iOS through FCM (``GCMDevice``), iOS through APNs.

    OPTIONS: ``APPLICATION_ID`` (push-notifications application id for devices that have none;
    ``FCM_APPLICATION_ID`` / ``APNS_APPLICATION_ID`` per platform), ``TTL`` (seconds),
    ``TIMEOUT`` (seconds per APNs request, default 10), ``SOUND`` (APNs/Android sound,
    default "default"), ``ANDROID_CHANNEL_ID``.
    """

    consent_channel: ClassVar[str] = "push"
    template_folder: ClassVar[str] = "push"
    label: ClassVar[str] = "Mobile push"
    option_names: ClassVar[frozenset[str]] = BasePushChannel.option_names | {
        "FCM_APPLICATION_ID",
        "APNS_APPLICATION_ID",
        "SOUND",
        "ANDROID_CHANNEL_ID",
    }

    def __init__(self, name: str, *, cost: Decimal, currency: str, options: dict[str, Any]) -> None:
        super().__init__(name, cost=cost, currency=currency, options=options)
        self.fcm_application_id = self.options.get("FCM_APPLICATION_ID") or self.application_id
        self.apns_application_id = self.options.get("APNS_APPLICATION_ID") or self.application_id
        self.sound: str = self.options.get("SOUND", "default") or ""
        self.android_channel_id: str | None = self.options.get("ANDROID_CHANNEL_ID") or None
        if self.timeout is None:
            self.timeout = 10.0

    def device_models(self) -> list[tuple[str, QuerySet[Any]]]:
        from push_notifications.models import APNSDevice, GCMDevice

        return [
            ("fcm", GCMDevice.objects.filter(cloud_message_type="FCM")),
            ("apns", APNSDevice.objects.all()),
        ]

    # --- payloads ------------------------------------------------------------------------------

    def plan(self, message: Message) -> list[DeviceSend]:
        if message.profile is None:
            return []
        content = self.content(message)
        sends = []
        for kind, device in self.devices(message.profile):
            if kind == "fcm":
                send = DeviceSend(
                    kind, device, None, device.application_id or self.fcm_application_id
                )
                try:
                    send.payload = self.fcm_message(device.registration_id, content)
                    # Encoding validates: a bad message must not sink the whole FCM call.
                    self.fcm_request(send.payload)
                except ValueError as exc:
                    send.fail(REJECTED, f"invalid FCM message: {exc}")
            else:
                send = DeviceSend(
                    kind, device, None, device.application_id or self.apns_application_id
                )
                send.payload = self.apns_request(device.registration_id, content)
            sends.append(send)
        return sends

    def fcm_message(self, token: str, content: dict[str, str]) -> Any:
        """The firebase_admin Message for one device (notification, data, platform options)."""
        from firebase_admin import messaging

        image = content.get("image")
        url = content.get("url")
        data = {key: content[key] for key in ("url", "message_id") if key in content}
        message = messaging.Message(
            notification=messaging.Notification(
                title=content.get("title"), body=content.get("body"), image=image
            ),
            data=data,
            android=messaging.AndroidConfig(
                ttl=self.ttl,
                notification=messaging.AndroidNotification(
                    channel_id=self.android_channel_id, sound=self.sound or None
                ),
            ),
            apns=messaging.APNSConfig(
                payload=messaging.APNSPayload(
                    aps=messaging.Aps(sound=self.sound or None, mutable_content=bool(image))
                ),
                fcm_options=messaging.APNSFCMOptions(image=image) if image else None,
            ),
            # FCM accepts only https links for web clients (a Firebase JS SDK app).
            webpush=messaging.WebpushConfig(
                headers={"TTL": str(self.ttl)},
                fcm_options=messaging.WebpushFCMOptions(link=url)
                if url and url.startswith("https://")
                else None,
            ),
        )
        # push-notifications stores FCM registration tokens. firebase-admin 7.7 deprecates
        # ``token=`` in favour of installation ids (``fid``), which apps do not register with
        # push-notifications; set it as push_notifications.gcm does, after construction.
        message.token = token
        return message

    @staticmethod
    def fcm_request(message: Any) -> dict[str, Any]:
        """The JSON body firebase-admin posts to FCM's HTTP v1 ``messages:send``."""
        from firebase_admin import messaging

        # firebase-admin's own encoder: the outbox shows exactly what would be posted.
        return {"message": messaging._MessagingService.encode_message(message)}

    def apns_request(self, token: str, content: dict[str, str]) -> Any:
        """The aioapns NotificationRequest, built by push-notifications' apns_async helper."""
        from aioapns.common import PushType
        from push_notifications import apns_async

        alert = apns_async.Alert(title=content.get("title", ""), body=content.get("body", ""))
        extra = {key: content[key] for key in ("url", "image", "message_id") if key in content}
        request = apns_async._create_notification_request_from_args(
            token,
            alert,
            sound=self.sound or None,
            extra=extra,
            # A notification service extension downloads the image only when this is set.
            aps_kwargs={"mutable-content": 1} if "image" in content else {},
            notification_request_kwargs={"time_to_live": self.ttl, "push_type": PushType.ALERT},
        )
        # push-notifications writes "badge": null etc.; keep the payload to what we set.
        aps = request.message["aps"]
        request.message["aps"] = {key: value for key, value in aps.items() if value is not None}
        return request

    def describe(self, send: DeviceSend) -> dict[str, Any]:
        if send.kind == "fcm":
            if send.payload is None:
                return {"error": send.error}
            return {"request": self.fcm_request(send.payload)}
        request = send.payload
        return {
            "device_token": request.device_token,
            "headers": {"apns-push-type": "alert", "apns-expiration": f"now + {self.ttl}s"},
            "payload": request.message,
        }

    # --- sending -------------------------------------------------------------------------------

    def dispatch(self, sends: list[DeviceSend]) -> None:
        self.dispatch_fcm([send for send in sends if send.kind == "fcm"])
        self.dispatch_apns([send for send in sends if send.kind == "apns"])

    def dispatch_fcm(self, sends: list[DeviceSend]) -> None:
        """``send_each`` in calls of at most 500 messages, per Firebase app."""
        from firebase_admin import exceptions as firebase_exceptions
        from firebase_admin import messaging

        by_app: dict[str | None, list[DeviceSend]] = defaultdict(list)
        for send in sends:
            by_app[send.application_id].append(send)
        for application_id, group in by_app.items():
            try:
                app, per_call = self.firebase_app(application_id)
            except ImproperlyConfigured as exc:
                for send in group:
                    send.fail(REJECTED, f"FCM is not configured: {exc}")
                continue
            for start in range(0, len(group), per_call):
                chunk = group[start : start + per_call]
                try:
                    batch = messaging.send_each([send.payload for send in chunk], app=app)
                except firebase_exceptions.FirebaseError as exc:
                    # The whole call failed (e.g. no OAuth token): nothing was sent.
                    result, retry_after = self.classify_fcm(exc)
                    for send in chunk:
                        send.fail(result, f"{exc.code}: {exc}", retry_after=retry_after)
                    continue
                except ValueError as exc:  # no such Firebase app, no project id
                    for send in chunk:
                        send.fail(REJECTED, f"FCM is not configured: {exc}")
                    continue
                for send, response in zip(chunk, batch.responses, strict=True):
                    if response.success:
                        send.succeed(response.message_id)
                    else:
                        result, retry_after = self.classify_fcm(response.exception)
                        send.fail(
                            result,
                            f"{response.exception.code}: {response.exception}",
                            retry_after=retry_after,
                        )

    @staticmethod
    def firebase_app(application_id: str | None) -> tuple[Any, int]:
        """The Firebase app push-notifications configures for ``application_id`` and the most
        tokens per call (its MAX_RECIPIENTS, never above FCM's 500)."""
        from push_notifications.conf import get_manager

        manager = get_manager()
        try:
            app = manager.get_firebase_app(application_id)
        except ImproperlyConfigured:
            if application_id:
                raise
            # AppConfig without an application id: firebase-admin's default app, as
            # push_notifications.gcm.send_message does.
            app = None
        try:
            per_call = int(manager.get_max_recipients(application_id))
        except (ImproperlyConfigured, TypeError, ValueError):
            per_call = FCM_MAX_PER_CALL
        return app, max(1, min(per_call, FCM_MAX_PER_CALL))

    @staticmethod
    def classify_fcm(exc: Any) -> tuple[str, float | None]:
        """Our result for a firebase-admin error, and the Retry-After of a 429."""
        from firebase_admin import exceptions as firebase_exceptions
        from firebase_admin import messaging

        response = getattr(exc, "http_response", None)
        if isinstance(
            exc, messaging.QuotaExceededError | firebase_exceptions.ResourceExhaustedError
        ):
            headers = getattr(response, "headers", None) or {}
            return RATE_LIMITED, parse_retry_after(headers.get("Retry-After"))
        # The same errors push_notifications.gcm deactivates on, but INVALID_ARGUMENT only
        # when it is about the token (it also means a bad payload, which is not the device's).
        if isinstance(exc, messaging.UnregisteredError | messaging.SenderIdMismatchError):
            return DEACTIVATED, None
        if isinstance(exc, firebase_exceptions.InvalidArgumentError):
            text = str(exc).lower()
            if "registration token" in text or "invalid registration" in text:
                return DEACTIVATED, None
            return REJECTED, None
        if isinstance(
            exc,
            firebase_exceptions.UnavailableError
            | firebase_exceptions.InternalError
            | firebase_exceptions.DeadlineExceededError
            | firebase_exceptions.UnknownError,
        ):
            return TEMPORARY, None
        status = _http_status(response)
        if status is not None and status >= 500:
            return TEMPORARY, None
        return REJECTED, None

    def dispatch_apns(self, sends: list[DeviceSend]) -> None:
        """All APNs requests of the batch on one event loop, one client per application."""
        if not sends:
            return
        from aioapns import ConnectionError as APNsConnectionError

        try:
            results = asyncio.run(self._send_apns(sends))
        except (ImproperlyConfigured, ValueError, OSError) as exc:
            # No credentials, unreadable key file, cert and key both set.
            for send in sends:
                send.fail(REJECTED, f"APNs is not configured: {exc}")
            return
        except APNsConnectionError as exc:
            for send in sends:
                send.fail(TEMPORARY, f"APNs connection failed: {exc}")
            return
        for send, result in zip(sends, results, strict=True):
            self.apply_apns_result(send, result)

    async def _send_apns(self, sends: list[DeviceSend]) -> list[Any]:
        from push_notifications import apns_async

        clients: dict[str | None, Any] = {}
        try:
            for send in sends:
                if send.application_id not in clients:
                    clients[send.application_id] = apns_async._create_client(
                        application_id=send.application_id
                    )
            return await asyncio.gather(
                *(self._send_apns_one(clients[send.application_id], send) for send in sends)
            )
        finally:
            for client in clients.values():
                client.pool.close()

    async def _send_apns_one(self, client: Any, send: DeviceSend) -> Any:
        from aioapns.common import NotificationResult

        request = send.payload
        try:
            return await asyncio.wait_for(client.send_notification(request), timeout=self.timeout)
        except TimeoutError:
            return NotificationResult(request.notification_id, "timeout", "TimeoutError")
        except Exception as exc:  # noqa: BLE001  (one device's connection error, not the batch's)
            return NotificationResult(
                request.notification_id, "error", f"{type(exc).__name__}: {exc}"
            )

    @staticmethod
    def apply_apns_result(send: DeviceSend, result: Any) -> None:
        """Map an aioapns NotificationResult (status is the HTTP status as a string)."""
        if result.is_successful:
            send.succeed(result.notification_id)
            return
        reason = f"{result.status} {result.description}".strip()
        if result.description in APNS_DEAD_TOKEN_REASONS or result.status == "410":
            send.fail(DEACTIVATED, reason)
        elif result.status == "429":
            send.fail(RATE_LIMITED, reason)
        elif not str(result.status).isdigit() or int(result.status) >= 500:
            send.fail(TEMPORARY, reason)
        else:
            send.fail(REJECTED, reason)


class WebPushChannel(BasePushChannel):
    """Browser push (``WebPushDevice``) with VAPID, through pywebpush.

    OPTIONS: ``APPLICATION_ID`` (for devices that have none), ``TTL`` (seconds), ``TIMEOUT``
    (seconds per request; default push-notifications' WP_ERROR_TIMEOUT), ``ICON`` and ``BADGE``
    (URLs shown by our service worker), ``URGENCY`` (very-low, low, normal, high),
    ``CONCURRENCY`` (requests in flight, default 8).
    """

    consent_channel: ClassVar[str] = "webpush"
    template_folder: ClassVar[str] = "webpush"
    label: ClassVar[str] = "Web push"
    option_names: ClassVar[frozenset[str]] = BasePushChannel.option_names | {
        "ICON",
        "BADGE",
        "URGENCY",
        "CONCURRENCY",
    }

    def __init__(self, name: str, *, cost: Decimal, currency: str, options: dict[str, Any]) -> None:
        super().__init__(name, cost=cost, currency=currency, options=options)
        self.icon = self.options.get("ICON") or ""
        self.badge = self.options.get("BADGE") or ""
        self.urgency = self.options.get("URGENCY") or ""
        if self.urgency and self.urgency not in ("very-low", "low", "normal", "high"):
            raise ConfigurationError(f"{name}: URGENCY must be very-low, low, normal or high")
        self.concurrency = max(1, int(self.options.get("CONCURRENCY", 8)))

    def device_models(self) -> list[tuple[str, QuerySet[Any]]]:
        from push_notifications.models import WebPushDevice

        return [("webpush", WebPushDevice.objects.all())]

    def notification(self, content: dict[str, str]) -> dict[str, str]:
        """The JSON our service worker (static/omnichannel/sw.js) shows."""
        data = dict(content)
        if self.icon:
            data["icon"] = links.absolute(self.icon)
        if self.badge:
            data["badge"] = links.absolute(self.badge)
        return data

    def plan(self, message: Message) -> list[DeviceSend]:
        if message.profile is None:
            return []
        body = json.dumps(self.notification(self.content(message)), ensure_ascii=False)
        return [
            DeviceSend(kind, device, body, device.application_id or self.application_id)
            for kind, device in self.devices(message.profile)
        ]

    def describe(self, send: DeviceSend) -> dict[str, Any]:
        headers = {"TTL": str(self.ttl), "Content-Encoding": "aes128gcm"}
        if self.urgency:
            headers["Urgency"] = self.urgency
        return {
            "endpoint": send.device.registration_id,
            "browser": send.device.browser,
            "headers": headers,
            "data": json.loads(send.payload),
        }

    def dispatch(self, sends: list[DeviceSend]) -> None:
        if not sends:
            return
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(sends))) as pool:
            list(pool.map(self.send_webpush, sends))

    def send_webpush(self, send: DeviceSend) -> None:
        """One encrypted POST to the subscription's endpoint (pywebpush)."""
        import requests
        from push_notifications.conf import get_manager
        from push_notifications.webpush import get_subscription_info
        from pywebpush import WebPushException, webpush

        device = send.device
        try:
            manager = get_manager()
            info = get_subscription_info(
                send.application_id,
                device.registration_id,
                device.browser,
                device.auth,
                device.p256dh,
            )
            private_key = manager.get_wp_private_key(send.application_id)
            claims = manager.get_wp_claims(send.application_id)
            timeout = self.timeout or manager.get_wp_error_timeout(send.application_id)
        except (ImproperlyConfigured, AttributeError, KeyError) as exc:
            send.fail(REJECTED, f"web push is not configured: {exc}")
            return
        headers = {"Urgency": self.urgency} if self.urgency else None
        try:
            response = webpush(
                subscription_info=info,
                data=send.payload,
                vapid_private_key=private_key,
                # pywebpush writes aud and exp into the claims: never into the settings.
                vapid_claims=dict(claims) if claims else None,
                timeout=timeout,
                ttl=self.ttl,
                headers=headers,
            )
        except WebPushException as exc:
            self.apply_webpush_error(send, exc)
        except requests.RequestException as exc:
            send.fail(TEMPORARY, f"{type(exc).__name__}: {exc}")
        except (ValueError, TypeError) as exc:  # undecodable p256dh/auth or VAPID key
            send.fail(REJECTED, f"invalid subscription or VAPID key: {exc}")
        else:
            send.succeed(response.headers.get("Location") or f"webpush-{device.pk}")

    @staticmethod
    def apply_webpush_error(send: DeviceSend, exc: Any) -> None:
        response = exc.response
        status = _http_status(response)
        reason = " ".join(str(exc.message).split())[:300]
        if status in (404, 410):
            # The subscription expired or was revoked (push-notifications deactivates too).
            send.fail(DEACTIVATED, reason)
        elif status == 429:
            send.fail(
                RATE_LIMITED,
                reason,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        elif status is None:
            send.fail(REJECTED, reason)  # e.g. no VAPID private key
        elif status >= 500:
            send.fail(TEMPORARY, reason)
        else:
            send.fail(REJECTED, reason)


# --- tests and override_settings -----------------------------------------------------------------

_saved_push_settings: list[dict[str, Any]] = []


@receiver(setting_changed)
def _follow_push_notifications_settings(*, setting: str, enter: bool, **kwargs: Any) -> None:
    """Make ``override_settings(PUSH_NOTIFICATIONS_SETTINGS=...)`` reach push-notifications.

    It reads its settings once, at import, into a dict that its modules share; we refill that
    dict (with its defaults) while the override lasts, restore it afterwards and rebuild its
    configuration manager.
    """
    if setting != "PUSH_NOTIFICATIONS_SETTINGS":
        return
    from push_notifications import conf as push_conf
    from push_notifications import settings as push_settings

    shared = push_settings.PUSH_NOTIFICATIONS_SETTINGS
    if enter:
        _saved_push_settings.append(dict(shared))
    if not enter and _saved_push_settings:
        # The saved copy, not the settings' dict: that may be the very dict we refilled.
        fresh = _saved_push_settings.pop()
    else:
        # Re-running the module applies push-notifications' defaults to the current value
        # (also when an override began before this module was imported).
        fresh = dict(importlib.reload(push_settings).PUSH_NOTIFICATIONS_SETTINGS)
    push_settings.PUSH_NOTIFICATIONS_SETTINGS = shared
    shared.clear()
    shared.update(fresh)
    push_conf.get_manager(reload=True)
