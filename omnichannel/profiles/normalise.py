"""Normalised identity values: lower-cased emails, E.164 phones."""

from __future__ import annotations

import phonenumbers
from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from ..conf import app_settings
from ..exceptions import InvalidIdentity
from .models import IdentityKind

MAX_VALUE_LENGTH = 255


def normalise_email(value: object) -> str:
    """Return the email lower-cased and stripped, or raise InvalidIdentity."""
    if not isinstance(value, str):
        raise InvalidIdentity(f"email must be a string, not {type(value).__name__}")
    email = value.strip().lower()
    if not email:
        raise InvalidIdentity("email is empty")
    try:
        validate_email(email)
    except ValidationError as exc:
        raise InvalidIdentity(f"{value!r} is not a valid email address") from exc
    return email


def normalise_phone(value: object, *, region: str | None = None) -> str:
    """Return the phone number in E.164 (``+447700900123``), or raise InvalidIdentity.

    Numbers without a ``+country`` prefix are read in ``region``, by default
    ``OMNICHANNEL["DEFAULT_PHONE_REGION"]``; with no region they are rejected.
    """
    if not isinstance(value, str):
        raise InvalidIdentity(f"phone must be a string, not {type(value).__name__}")
    region = region or app_settings.DEFAULT_PHONE_REGION
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidIdentity(f"{value!r} is not a phone number: {exc}") from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidIdentity(f"{value!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_token(value: object) -> str:
    """Opaque identifiers (loyalty cards, device tokens, visitor keys): stripped, non-empty."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidIdentity(f"identifier must be a string, not {type(value).__name__}")
    token = value.strip()
    if not token:
        raise InvalidIdentity("identifier is empty")
    if len(token) > MAX_VALUE_LENGTH:
        raise InvalidIdentity(f"identifier is longer than {MAX_VALUE_LENGTH} characters")
    return token


def normalise_identity(kind: str, value: object) -> str:
    """Normalise ``value`` for an identity of ``kind`` (an IdentityKind value)."""
    if kind == IdentityKind.EMAIL:
        return normalise_email(value)
    if kind == IdentityKind.PHONE:
        return normalise_phone(value)
    if kind == IdentityKind.LOYALTY_CARD:
        return normalise_token(value).upper().replace(" ", "")
    if kind in (
        IdentityKind.USER,
        IdentityKind.DEVICE,
        IdentityKind.TELEGRAM,
        IdentityKind.VISITOR,
    ):
        return normalise_token(value)
    raise InvalidIdentity(f"unknown identity kind {kind!r}")
