"""The SMS backend interface, in the shape of Django's email backends.

A backend gets its options as keyword arguments (the channel's ``OPTIONS`` minus the channel's
own keys), may hold a connection between ``open()`` and ``close()``, and sends a list of
:class:`SmsMessage` with ``send_messages``, returning one result per message in order: the
provider's message id, or the ChannelError for that message. A backend that takes delivery
reports implements ``parse_status_report`` for our ``omnichannel:sms-status`` webhook.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, ClassVar

from ....exceptions import ChannelError, ConfigurationError, PermanentChannelError

if TYPE_CHECKING:
    from django.http import HttpRequest


@dataclass
class SmsMessage:
    """One text to one number, as a backend sees it."""

    #: The recipient in E.164 (+447700900123).
    to: str
    body: str
    #: Sender number (E.164), short code or alphanumeric sender id (the channel's FROM).
    sender: str = ""
    #: Absolute URL the provider should post delivery reports to ('' for none).
    status_callback: str = ""
    #: Our Message's public id, for logs and outboxes.
    reference: str = ""


#: What ``send_messages`` returns per message: the provider's id, or the error.
SmsResult = str | ChannelError


class RecipientOptedOut(PermanentChannelError):
    """The provider refuses because the person opted out (replied STOP): the channel records
    the withdrawal of their SMS marketing consent."""


class InvalidRecipient(PermanentChannelError):
    """The number can never receive texts (not a mobile number, malformed): the channel
    suppresses the address for every purpose."""


@dataclass
class StatusReport:
    """A provider's delivery report about one message, in our words."""

    provider_message_id: str
    #: A MessageStatus value (sent, delivered, failed, ...), or '' for a report we ignore.
    status: str
    #: The provider's own status word (e.g. Twilio's "undelivered").
    provider_status: str = ""
    error: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


class BaseSmsBackend:
    """Send texts through one provider. Subclasses implement ``send_messages``."""

    #: Options the backend understands; any other key is a ConfigurationError (a typo).
    option_names: ClassVar[frozenset[str]] = frozenset()
    #: Real providers need the channel's FROM; local backends do not.
    requires_sender: ClassVar[bool] = False
    #: Most messages the channel hands over per send_messages call.
    batch_size: ClassVar[int] = 100

    def __init__(self, **options: Any) -> None:
        unknown = set(options) - set(self.option_names)
        if unknown:
            raise ConfigurationError(
                f"{type(self).__module__}.{type(self).__name__} does not know the options "
                f"{sorted(unknown)} (it takes {sorted(self.option_names) or 'none'})"
            )
        self.options = options

    def open(self) -> None:
        """Open a connection (session) that following sends reuse; optional."""

    def close(self) -> None:
        """Close what ``open`` opened; optional."""

    def __enter__(self) -> BaseSmsBackend:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send_messages(self, messages: Sequence[SmsMessage]) -> list[SmsResult]:
        """Send ``messages``; one result per message, in order (never raise for one message)."""
        raise NotImplementedError(f"{type(self).__name__} must implement send_messages")

    def parse_status_report(self, request: HttpRequest, *, url: str) -> list[StatusReport]:
        """Authenticate and read a delivery report posted to our webhook at ``url``.

        Raise PermissionDenied when the request is not from the provider, ValueError when it is
        malformed. The default says the backend takes no reports (the webhook answers 404).
        """
        raise NotImplementedError(f"{type(self).__name__} takes no delivery reports")


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from an HTTP Retry-After header (delta-seconds or an HTTP date); None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = now or datetime.now(timezone.utc)
    return max((when - current).total_seconds(), 0.0)
