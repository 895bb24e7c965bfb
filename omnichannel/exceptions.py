"""Exceptions that carry framework meaning (as anymail's do)."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation


class OmnichannelError(Exception):
    """Base class of the app's own errors."""


class ConfigurationError(OmnichannelError, ImproperlyConfigured):
    """The OMNICHANNEL settings or an extension point are misconfigured."""


class InvalidIdentity(OmnichannelError, ValueError):
    """An identity value (email, phone, ...) cannot be normalised."""


class ChannelError(OmnichannelError):
    """A channel could not send a message. ``reason`` is the provider's words, for the log."""

    def __init__(self, reason: str, *, provider_response: object = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.provider_response = provider_response


class TemporaryChannelError(ChannelError):
    """Worth retrying later: a timeout, a 5xx, a connection refused."""


class RateLimited(TemporaryChannelError):
    """The provider said 429: slow the whole channel down, not just this message.

    ``retry_after`` is the provider's Retry-After in seconds when it gave one.
    """

    def __init__(
        self, reason: str, *, retry_after: float | None = None, provider_response: object = None
    ) -> None:
        super().__init__(reason, provider_response=provider_response)
        self.retry_after = retry_after


class PermanentChannelError(ChannelError):
    """Retrying will not help: an invalid address, a rejected payload, an unregistered device."""


class NotReachable(OmnichannelError):
    """The person cannot be reached on this channel for this purpose (``reason`` says why)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TamperedToken(OmnichannelError, SuspiciousOperation):
    """A signed link or token was altered, expired or is for something else (HTTP 400)."""


class SendCancelled(OmnichannelError):
    """Raised by a ``pre_send`` receiver to stop a message (it is marked suppressed)."""
