"""Exceptions that carry framework meaning (as anymail's do)."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured


class OmnichannelError(Exception):
    """Base class of the app's own errors."""


class ConfigurationError(OmnichannelError, ImproperlyConfigured):
    """The OMNICHANNEL settings or an extension point are misconfigured."""


class InvalidIdentity(OmnichannelError, ValueError):
    """An identity value (email, phone, ...) cannot be normalised."""
