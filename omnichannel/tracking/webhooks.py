"""Provider webhooks that anymail does not cover: Telegram updates, SMS delivery reports."""

from django.http import HttpRequest, HttpResponse


def telegram_update(request: HttpRequest) -> HttpResponse:
    return HttpResponse(status=501)


def sms_status(request: HttpRequest, channel: str) -> HttpResponse:
    return HttpResponse(status=501)
