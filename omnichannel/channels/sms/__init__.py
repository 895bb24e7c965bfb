"""SMS: a channel billed per segment, over pluggable backends (console, locmem, Twilio)."""

from .backends.base import BaseSmsBackend, SmsMessage, StatusReport
from .channel import SmsChannel
from .encoding import sms_encoding, sms_segments

__all__ = [
    "BaseSmsBackend",
    "SmsChannel",
    "SmsMessage",
    "StatusReport",
    "sms_encoding",
    "sms_segments",
]
