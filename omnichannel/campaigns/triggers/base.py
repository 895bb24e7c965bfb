"""The trigger interface: what enrolls a person in a triggered campaign, and what ends it.

A trigger is a class registered under a key (``registry.register``). The engine calls it in
batches, never per person:

* ``enrollments_for_events(campaign, events, now)`` when the fold task has folded a batch of
  events into profiles (only events whose type is in ``event_types``); it returns
  ``EnrollmentSpec`` rows to insert. A spec for an existing active enrollment with
  ``restart=True`` pushes its next step back (new basket activity restarts the timer).
* ``scan(campaign, now)`` on every tick at most every ``scan_interval`` (wishlists getting old,
  people entering a segment, repeated product views).
* ``current_items(enrollments)`` for item reminders (``reminds_items``): the product ids each
  enrollment still reminds about, or an ``ExitReason`` when its subject is gone. The engine
  drops the items the person bought since enrolling, online or offline, and ends the
  enrollment when none remain.
* ``template_context(enrollments)``: what the message templates see (items, order, ...).

Shop developers subclass a trigger (or ``Trigger``) and register it under a new key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from django.core.exceptions import ValidationError

if TYPE_CHECKING:
    from ...profiles.models import Event
    from ..models import Campaign, Enrollment, ExitReason


@dataclass(frozen=True)
class Option:
    """One setting of a trigger, kept in ``Campaign.trigger_options``."""

    default: Any
    help: str = ""
    type: type = int
    minimum: int | None = 0
    required: bool = False

    def clean(self, name: str, value: Any) -> Any:
        if value is None:
            if self.required:
                raise ValidationError(f"{name}: required")
            return self.default
        if self.type is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValidationError(f"{name}: must be a whole number, not {value!r}")
            if self.minimum is not None and value < self.minimum:
                raise ValidationError(f"{name}: must be at least {self.minimum}, not {value}")
        elif self.type is str:
            if not isinstance(value, str) or (self.required and not value.strip()):
                raise ValidationError(f"{name}: must be a non-empty text, not {value!r}")
        elif not isinstance(value, self.type):
            raise ValidationError(f"{name}: must be {self.type.__name__}, not {value!r}")
        return value


@dataclass
class EnrollmentSpec:
    """An enrollment a trigger asks for: who, about what, and when its first step is due."""

    profile_id: int
    due_at: datetime
    subject_key: str = ""
    context: dict[str, Any] = field(default_factory=dict)
    #: The trigger's clock (e.g. the latest basket activity); stored on the enrollment.
    activity_at: datetime | None = None
    #: An existing active enrollment for the same subject gets its next step pushed back to
    #: ``due_at`` (or later, after its last message) instead of being left alone.
    restart: bool = False


class Trigger:
    """Base class of triggers. Subclasses set ``key``, ``label`` and implement the hooks."""

    key: ClassVar[str]
    label: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: Options of this trigger: name -> Option (validated into Campaign.trigger_options).
    options: ClassVar[dict[str, Option]] = {}
    #: Event types ``enrollments_for_events`` wants to see.
    event_types: ClassVar[tuple[str, ...]] = ()
    #: Whether ``scan`` does anything (the engine skips it otherwise).
    scans: ClassVar[bool] = False
    #: Seconds between two scans of one campaign.
    scan_interval: ClassVar[int] = 300
    #: The enrollment reminds about products: bought ones are dropped, none left ends it.
    reminds_items: ClassVar[bool] = False
    #: An order placed after enrolling ends the enrollment as converted.
    order_converts: ClassVar[bool] = True

    def validate_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The options with defaults filled in; ValidationError naming each bad option."""
        if not isinstance(options, dict):
            raise ValidationError("trigger options must be a JSON object")
        unknown = sorted(set(options) - set(self.options))
        errors = [f"{name}: unknown option of {self.key}" for name in unknown]
        cleaned: dict[str, Any] = {}
        for name, option in self.options.items():
            try:
                cleaned[name] = option.clean(name, options.get(name))
            except ValidationError as exc:
                errors.extend(exc.messages)
        if errors:
            raise ValidationError(errors)
        return cleaned

    def option(self, campaign: Campaign, name: str) -> Any:
        """One option of ``campaign`` (its default when unset)."""
        value = (campaign.trigger_options or {}).get(name)
        return self.options[name].default if value is None else value

    def minutes(self, campaign: Campaign, name: str) -> timedelta:
        return timedelta(minutes=int(self.option(campaign, name)))

    # --- hooks -----------------------------------------------------------------------------------

    def enrollments_for_events(
        self, campaign: Campaign, events: Sequence[Event], *, now: datetime
    ) -> list[EnrollmentSpec]:
        """Enrollments asked for by a batch of folded events (already of ``event_types``)."""
        return []

    def scan(self, campaign: Campaign, *, now: datetime) -> list[EnrollmentSpec]:
        """Enrollments found by looking at the database (for time- or segment-based triggers)."""
        return []

    def current_items(self, enrollments: Sequence[Enrollment]) -> dict[int, list[int] | ExitReason]:
        """Item reminders: enrollment pk -> product ids it reminds about, or why it is over."""
        return {}

    def template_context(self, enrollments: Sequence[Enrollment]) -> dict[int, dict[str, Any]]:
        """Enrollment pk -> extra template context (items, order, ...); one query per kind."""
        return {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key!r}>"
