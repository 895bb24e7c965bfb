"""Writes each text to a stream (stdout by default) instead of sending it: for development."""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Sequence
from typing import IO, Any

from .base import BaseSmsBackend, SmsMessage, SmsResult


class SmsBackend(BaseSmsBackend):
    """``omnichannel.channels.sms.backends.console.SmsBackend``: prints texts, sends nothing."""

    option_names = frozenset({"STREAM"})

    def __init__(self, *, stream: IO[str] | None = None, **options: Any) -> None:
        super().__init__(**options)
        # Resolved at send time by default, so a redirected stdout (tests) is honoured.
        self.stream = stream or self.options.get("STREAM")
        self._lock = threading.RLock()

    def send_messages(self, messages: Sequence[SmsMessage]) -> list[SmsResult]:
        from ..encoding import sms_encoding, sms_segments

        stream = self.stream or sys.stdout
        results: list[SmsResult] = []
        with self._lock:
            for message in messages:
                message_id = f"console-{uuid.uuid4().hex}"
                stream.write(
                    f"SMS {message_id}\nFrom: {message.sender}\nTo: {message.to}\n"
                    f"Segments: {sms_segments(message.body)} ({sms_encoding(message.body)})\n\n"
                    f"{message.body}\n{'-' * 79}\n"
                )
                results.append(message_id)
            stream.flush()
        return results
