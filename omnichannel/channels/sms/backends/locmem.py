"""Keeps texts in a module-level ``outbox`` list instead of sending them: for tests.

Like ``django.core.mail.outbox``::

    from omnichannel.channels.sms.backends import locmem
    locmem.outbox.clear()
    ...  # send
    assert locmem.outbox[0].to == "+447700900123"
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from .base import BaseSmsBackend, SmsMessage, SmsResult

#: Every SmsMessage "sent" through this backend in this process, oldest first.
outbox: list[SmsMessage] = []


class SmsBackend(BaseSmsBackend):
    """``omnichannel.channels.sms.backends.locmem.SmsBackend``: appends to ``outbox``."""

    def send_messages(self, messages: Sequence[SmsMessage]) -> list[SmsResult]:
        results: list[SmsResult] = []
        for message in messages:
            outbox.append(message)
            results.append(f"locmem-{uuid.uuid4().hex}")
        return results
