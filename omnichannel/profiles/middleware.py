"""Gives every visitor a stable key, so an anonymous shopper has a profile to merge later."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from ..conf import app_settings
from . import context

_VALID_KEY = re.compile(r"^[0-9a-f]{32}$")


class VisitorMiddleware:
    """Reads or issues the visitor cookie and exposes the request to our signal receivers.

    Writes nothing to the database: the key only becomes a profile when an event names it.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        cookie_name = app_settings.VISITOR_COOKIE_NAME
        key = request.COOKIES.get(cookie_name, "")
        is_new = not _VALID_KEY.match(key)
        if is_new:
            key = uuid.uuid4().hex
        request.omnichannel_visitor_key = key  # type: ignore[attr-defined]
        request.omnichannel_visitor_is_new = is_new  # type: ignore[attr-defined]
        token = context.current.set(context.RequestContext(request=request, visitor_key=key))
        try:
            response = self.get_response(request)
        finally:
            context.current.reset(token)
        if is_new:
            response.set_cookie(
                cookie_name,
                key,
                max_age=app_settings.VISITOR_COOKIE_AGE,
                httponly=True,
                samesite="Lax",
                secure=request.is_secure(),
            )
        return response
