"""``Authorization: Api-Key <prefix>.<secret>``: the API's only way in."""

from __future__ import annotations

import contextlib
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from .models import ApiKey

KEYWORD = "Api-Key"


class ApiKeyAuthentication(BaseAuthentication):
    """Authenticates the request as an ApiKey (``request.auth``); ``request.user`` stays
    anonymous, since a key is a client, not a person.

    No header at all: not authenticated (401 from the permission check). A malformed, unknown
    or revoked key: 401 at once, with the same message for all three, so a caller cannot tell
    which prefixes exist.
    """

    def authenticate(self, request: Any) -> tuple[AnonymousUser, ApiKey] | None:
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != KEYWORD.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                _("Invalid Api-Key header: write 'Authorization: Api-Key <prefix>.<secret>'.")
            )
        try:
            prefix, _dot, secret = header[1].decode("ascii").partition(".")
        except UnicodeDecodeError:
            prefix = secret = ""
        key = None
        if prefix and secret and len(prefix) <= 32:
            with contextlib.suppress(ApiKey.DoesNotExist):
                key = ApiKey.objects.get(prefix=prefix)
        if key is None or not key.check_secret(secret) or not key.is_active:
            raise exceptions.AuthenticationFailed(_("Invalid or revoked API key."))
        key.touch(now=timezone.now())
        return AnonymousUser(), key

    def authenticate_header(self, request: Any) -> str:
        # Makes DRF answer 401 (with this WWW-Authenticate) rather than 403 without a key.
        return KEYWORD


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Declares the Api-Key header in the OpenAPI schema (and Swagger UI's Authorize box)."""

    target_class = "omnichannel.api.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Api-Key <prefix>.<secret>`, as shown once when the key was created.",
        }
