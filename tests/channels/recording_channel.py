"""A channel backend for the tests of the sending service: a provider that answers from a script.

It is a real BaseChannel subclass configured through OMNICHANNEL["CHANNELS"], as a shop's own
channel would be; only its "provider" is a list in memory. Each send pops the next scripted
outcome for the address ("ok" by default): a provider id, or an exception to raise.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, ClassVar

from omnichannel.channels.base import BaseChannel
from omnichannel.exceptions import ChannelError
from omnichannel.profiles.models import IdentityKind

#: Every call the provider received: (channel name, address, subject, body).
calls: list[tuple[str, str, str, str]] = []
#: address -> outcomes still to come (ChannelError instances or Exceptions); "ok" when empty.
script: dict[str, list[BaseException]] = defaultdict(list)


def reset() -> None:
    calls.clear()
    script.clear()


class RecordingChannel(BaseChannel):
    consent_channel: ClassVar[str] = "sms"
    template_folder: ClassVar[str] = "sms"
    template_parts: ClassVar[dict[str, bool]] = {"subject.txt": False, "body.txt": True}
    batch_size: ClassVar[int] = 2

    def get_address(self, profile: Any) -> str | None:
        identity = (
            profile.identities.filter(kind=IdentityKind.PHONE).order_by("-created_at").first()
        )
        return identity.value if identity else None

    def units(self, message: Any) -> int:
        return max(1, -(-len(message.body_text) // 160))

    def send(self, message: Any) -> str:
        calls.append((self.name, message.address, message.subject, message.body_text))
        pending = script.get(message.address)
        if pending:
            outcome = pending.pop(0)
            if isinstance(outcome, (ChannelError, Exception)):
                raise outcome
        return f"rec-{len(calls)}"
