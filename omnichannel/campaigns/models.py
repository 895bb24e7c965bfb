"""Campaigns: what to say (steps), to whom (triggers, segments) and where each person stands.

A ``Campaign`` is triggered (a trigger from ``campaigns.triggers`` enrolls people as things
happen) or mass (a segment is enrolled at a set time). Its ``Step`` rows are the cascade: each
step names a channel (or "best channel"), how long to wait after the previous message, and the
engagement that makes the cascade stop before it. An ``Enrollment`` is one person going through
one campaign about one subject (a basket, a wishlist, an order, or nothing): the engine's work
queue is its ``next_due_at``; ``EnrollmentLog`` is its history.
"""

from __future__ import annotations

from datetime import timedelta

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from ..profiles.models import CustomerProfile, Purpose

#: Step.channel value meaning "the cheapest channel this person engages with".
BEST_CHANNEL = "best"


class CampaignKind(models.TextChoices):
    TRIGGERED = "triggered", _("Triggered")
    MASS = "mass", _("Mass send")


class CampaignStatus(models.TextChoices):
    """Only active campaigns enroll and send; a paused one keeps its enrollments waiting."""

    DRAFT = "draft", _("Draft")
    ACTIVE = "active", _("Active")
    PAUSED = "paused", _("Paused")
    FINISHED = "finished", _("Finished")


class CappedAction(models.TextChoices):
    """What happens to a message a frequency cap holds back."""

    DELAY = "delay", _("Delay until the cap allows it")
    DROP = "drop", _("Drop it (end the enrollment)")


class Campaign(models.Model):
    """A triggered or mass campaign: audience, trigger, purpose, window, priority and caps."""

    name = models.CharField(_("name"), max_length=120, unique=True)
    kind = models.CharField(
        _("kind"), max_length=16, choices=CampaignKind.choices, default=CampaignKind.TRIGGERED
    )
    status = models.CharField(
        _("status"), max_length=16, choices=CampaignStatus.choices, default=CampaignStatus.DRAFT
    )
    trigger = models.CharField(
        _("trigger"),
        max_length=64,
        blank=True,
        help_text=_("What enrolls a person (triggered campaigns): a key of the trigger registry."),
    )
    trigger_options = models.JSONField(
        _("trigger options"),
        default=dict,
        blank=True,
        help_text=_('Options of the trigger, e.g. {"delay_minutes": 60}; see docs/campaigns.md.'),
    )
    audience = models.ForeignKey(
        "omnichannel.Segment",
        verbose_name=_("audience segment"),
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="campaigns",
        help_text=_(
            "Only members are enrolled, and an enrollment ends when its person leaves it. "
            "Empty: everyone (triggered campaigns)."
        ),
    )
    exclusion = models.ForeignKey(
        "omnichannel.Segment",
        verbose_name=_("exclusion segment"),
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="excluding_campaigns",
        help_text=_("Members of this segment are never enrolled, and leave when they join it."),
    )
    purpose = models.CharField(
        _("purpose"), max_length=20, choices=Purpose.choices, default=Purpose.MARKETING
    )
    priority = models.SmallIntegerField(
        _("priority"),
        default=0,
        help_text=_(
            "When a frequency cap allows fewer messages than are due, the higher priority "
            "wins (e.g. a basket reminder at 100 before a promotion at 0)."
        ),
    )
    starts_at = models.DateTimeField(_("active from"), null=True, blank=True)
    ends_at = models.DateTimeField(
        _("active until"),
        null=True,
        blank=True,
        help_text=_("After this nobody is enrolled and running enrollments end."),
    )
    # Per-campaign caps, on top of the shop-wide FREQUENCY_CAPS for all marketing.
    cap_per_day = models.PositiveSmallIntegerField(
        _("messages per person per day"), null=True, blank=True
    )
    cap_per_week = models.PositiveSmallIntegerField(
        _("messages per person per week"), null=True, blank=True
    )
    when_capped = models.CharField(
        _("when a cap holds a message back"),
        max_length=8,
        choices=CappedAction.choices,
        default=CappedAction.DELAY,
    )
    quiet_hours = models.BooleanField(
        _("respect quiet hours"),
        default=True,
        help_text=_("Defer messages due in the person's quiet hours to the morning."),
    )
    reenroll_after = models.DurationField(
        _("re-enroll after"),
        null=True,
        blank=True,
        help_text=_(
            "Segment-entry and event triggers: how long after an enrollment the same person "
            "may be enrolled again. Empty: once per subject."
        ),
    )
    # Mass campaigns.
    send_at = models.DateTimeField(
        _("send at"),
        null=True,
        blank=True,
        help_text=_("Mass campaigns: when to send (empty: as soon as it is activated)."),
    )
    send_at_best_hour = models.BooleanField(
        _("each person at their best hour"),
        default=False,
        help_text=_("Mass campaigns: spread the send over 24 hours, each person at their hour."),
    )
    # Measurement (analytics): a holdout that gets nothing, and how long an order counts.
    holdout_percent = models.PositiveSmallIntegerField(
        _("holdout (% of the audience)"),
        default=0,
        validators=[MaxValueValidator(50)],
        help_text=_(
            "This share of the people enrolled get no message at all, chosen by a stable hash "
            "of person and campaign, so the report can show the uplift over doing nothing."
        ),
    )
    measure_window = models.DurationField(
        _("conversion window"),
        default=timedelta(days=7),
        help_text=_(
            "An order within this long after a person is enrolled counts as their conversion "
            "in the variant and holdout comparison."
        ),
    )
    ready_made = models.CharField(
        _("ready-made key"),
        max_length=40,
        blank=True,
        editable=False,
        help_text=_(
            "Set on the campaigns omnichannel_create_campaigns creates: a re-run finds them by "
            "this key, whatever staff renamed them to."
        ),
    )
    launched_at = models.DateTimeField(_("fanned out"), null=True, blank=True, editable=False)
    last_scanned_at = models.DateTimeField(
        _("last trigger scan"), null=True, blank=True, editable=False
    )
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("campaign")
        verbose_name_plural = _("campaigns")
        ordering = ["-priority", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["ready_made"],
                condition=~Q(ready_made=""),
                name="oc_campaign_ready_made",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from .triggers import registry

        errors: dict[str, str] = {}
        if self.kind == CampaignKind.TRIGGERED:
            if not self.trigger:
                errors["trigger"] = _("A triggered campaign needs a trigger.")
            elif self.trigger not in registry:
                errors["trigger"] = _("Unknown trigger %(key)r; known: %(known)s.") % {
                    "key": self.trigger,
                    "known": ", ".join(sorted(registry)),
                }
            else:
                try:
                    registry[self.trigger].validate_options(self.trigger_options or {})
                except ValidationError as exc:
                    errors["trigger_options"] = "; ".join(exc.messages)
        elif self.audience_id is None:
            errors["audience"] = _("A mass campaign needs an audience segment.")
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            errors["ends_at"] = _("The end must be after the start.")
        if self.audience_id and self.audience_id == self.exclusion_id:
            errors["exclusion"] = _("The exclusion segment cannot be the audience.")
        if self.holdout_percent and self.purpose != Purpose.MARKETING:
            errors["holdout_percent"] = _(
                "Only marketing campaigns can hold people out: a transactional message is owed."
            )
        if errors:
            raise ValidationError(errors)

    @property
    def holds_out(self) -> bool:
        """Whether this campaign holds out part of its people (marketing campaigns only)."""
        return bool(self.holdout_percent) and self.purpose == Purpose.MARKETING

    def is_live(self, now) -> bool:  # type: ignore[no-untyped-def]
        """Active and inside its window at ``now``."""
        return (
            self.status == CampaignStatus.ACTIVE
            and (self.starts_at is None or self.starts_at <= now)
            and (self.ends_at is None or now < self.ends_at)
        )


class StopCondition(models.TextChoices):
    """What an earlier message of the enrollment must not have reached for this step to go."""

    OPENED = "opened", _("Not opened or clicked")
    CLICKED = "clicked", _("Not clicked")
    NEVER = "never", _("Always send")


class Step(models.Model):
    """One step of a campaign's cascade: a channel, a wait, a stop condition and content."""

    campaign = models.ForeignKey(
        Campaign, verbose_name=_("campaign"), on_delete=models.CASCADE, related_name="steps"
    )
    position = models.PositiveSmallIntegerField(_("order"), default=1)
    channel = models.CharField(
        _("channel"),
        max_length=32,
        help_text=_(
            "A channel of OMNICHANNEL['CHANNELS'], or 'best': the channel with the lowest cost "
            "per engagement for this person among those that can reach them."
        ),
    )
    wait = models.DurationField(
        _("wait"),
        default=timedelta(0),
        help_text=_(
            "How long after the previous message (the first step: after the trigger) this "
            "step goes. A skipped step passes on at once."
        ),
    )
    stop_if = models.CharField(
        _("send only if earlier messages were"),
        max_length=8,
        choices=StopCondition.choices,
        default=StopCondition.OPENED,
    )
    template = models.CharField(
        _("template"),
        max_length=200,
        help_text=_(
            "Template key, e.g. abandoned_basket: templates/omnichannel/<channel folder>/"
            "<key>_<part>. Each channel has its own parts (subject, body.html, body.txt, ...)."
        ),
    )
    content = models.JSONField(
        _("inline content"),
        default=dict,
        blank=True,
        help_text=_(
            'Optional per-channel overrides of template parts, e.g. {"sms": {"body.txt": '
            '"{{ first_name }}, your basket is waiting: {% tracked_url restore_url %}"}}.'
        ),
    )
    best_hour = models.BooleanField(
        _("send at the person's best hour"),
        default=False,
        help_text=_(
            "Hold the message until the hour this person usually opens or clicks "
            "(the shop's default hour when unknown), within the next 24 hours."
        ),
    )

    class Meta:
        verbose_name = _("step")
        verbose_name_plural = _("steps")
        ordering = ["campaign", "position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["campaign", "position"], name="oc_step_position"),
        ]

    def __str__(self) -> str:
        return f"{self.position}. {self.channel} after {self.wait}"

    def clean(self) -> None:
        from ..channels.registry import channel_choices

        names = [name for name, _label in channel_choices()]
        if self.channel != BEST_CHANNEL and self.channel not in names:
            raise ValidationError(
                {
                    "channel": _("Unknown channel %(name)r; configured: %(known)s, or best.")
                    % {"name": self.channel, "known": ", ".join(names)}
                }
            )
        if self.wait is not None and self.wait < timedelta(0):
            raise ValidationError({"wait": _("The wait cannot be negative.")})
        if not isinstance(self.content, dict) or not all(
            isinstance(parts, dict) and all(isinstance(v, str) for v in parts.values())
            for parts in self.content.values()
        ):
            raise ValidationError(
                {"content": _('Inline content must be {"<channel>": {"<part>": "<text>"}}.')}
            )


class Variant(models.Model):
    """An A/B variant of a step: another subject, other content or another channel.

    Each person gets one variant of the step, chosen by a stable hash of person and campaign
    (``campaigns.groups``) weighed by ``weight``, and keeps it however often the step is due.
    """

    step = models.ForeignKey(
        Step, verbose_name=_("step"), on_delete=models.CASCADE, related_name="variants"
    )
    name = models.CharField(
        _("name"), max_length=40, help_text=_('Shown in the reports, e.g. "A" or "short subject".')
    )
    weight = models.PositiveSmallIntegerField(
        _("weight"),
        default=1,
        validators=[MinValueValidator(1)],
        help_text=_("Relative share of the people: weights 1 and 1 split them half and half."),
    )
    subject = models.CharField(
        _("subject or title"),
        max_length=255,
        blank=True,
        help_text=_("Replaces the subject (email) or title (push) part; a template string."),
    )
    content = models.JSONField(
        _("inline content"),
        default=dict,
        blank=True,
        help_text=_("Per-channel template parts replacing the step's, as in the step's content."),
    )
    channel = models.CharField(
        _("channel"),
        max_length=32,
        blank=True,
        help_text=_("Another channel (or 'best') for this variant; empty: the step's channel."),
    )

    class Meta:
        verbose_name = _("variant")
        verbose_name_plural = _("variants")
        ordering = ["step", "id"]
        constraints = [
            models.UniqueConstraint(fields=["step", "name"], name="oc_variant_name"),
        ]

    def __str__(self) -> str:
        return f"{self.step}: {self.name}"


class EnrollmentState(models.TextChoices):
    ACTIVE = "active", _("Active")
    COMPLETED = "completed", _("Completed (every step done)")
    EXITED = "exited", _("Exited")


class ExitReason(models.TextChoices):
    """Why an enrollment ended before or after its steps. Values are stored."""

    COMPLETED = "completed", _("All steps done")
    CONVERTED = "converted", _("Converted (ordered)")
    BOUGHT_ITEMS = "bought_items", _("Bought everything it reminded about")
    SUBJECT_GONE = "subject_gone", _("Basket or wishlist emptied, submitted or deleted")
    ENGAGED = "engaged", _("Opened or clicked: the cascade stopped")
    UNSUBSCRIBED = "unsubscribed", _("Unsubscribed or complained")
    LEFT_SEGMENT = "left_segment", _("Left the audience segment")
    EXCLUDED = "excluded", _("Joined the exclusion segment")
    UNREACHABLE = "unreachable", _("No channel could reach the person")
    CAPPED = "capped", _("Dropped by a frequency cap")
    CAMPAIGN_ENDED = "campaign_ended", _("The campaign ended")
    PROFILE_MERGED = "profile_merged", _("Profile merged into another")
    HELD_OUT = "held_out", _("In the holdout group: gets no message")
    ENDED_BY_STAFF = "ended_by_staff", _("Ended by staff in the admin")


class Enrollment(models.Model):
    """One person in one campaign about one subject; the engine's queue is ``next_due_at``."""

    campaign = models.ForeignKey(
        Campaign, verbose_name=_("campaign"), on_delete=models.CASCADE, related_name="enrollments"
    )
    profile = models.ForeignKey(
        CustomerProfile,
        verbose_name=_("profile"),
        on_delete=models.CASCADE,
        related_name="enrollments",
    )
    subject_key = models.CharField(
        _("subject"),
        max_length=100,
        blank=True,
        help_text=_('What it is about, e.g. "basket:12", "order:7"; empty for none.'),
    )
    context = models.JSONField(
        _("trigger data"),
        default=dict,
        blank=True,
        help_text=_("What the trigger knew: basket, order or product ids."),
    )
    state = models.CharField(
        _("state"),
        max_length=16,
        choices=EnrollmentState.choices,
        default=EnrollmentState.ACTIVE,
    )
    exit_reason = models.CharField(
        _("why it ended"), max_length=20, choices=ExitReason.choices, blank=True
    )
    step_position = models.PositiveSmallIntegerField(
        _("last step done"),
        default=0,
        help_text=_("Position of the last step done (sent or skipped); 0: none yet."),
    )
    next_due_at = models.DateTimeField(_("next due"), null=True, blank=True)
    enrolled_at = models.DateTimeField(_("enrolled"), default=timezone.now)
    last_activity_at = models.DateTimeField(
        _("last activity"),
        null=True,
        blank=True,
        help_text=_("The trigger's clock: the latest basket or wishlist activity."),
    )
    last_message_at = models.DateTimeField(_("last message"), null=True, blank=True)
    ended_at = models.DateTimeField(_("ended"), null=True, blank=True)
    holdout = models.BooleanField(
        _("in the holdout"),
        default=False,
        help_text=_("Held out for measurement: the campaign sends this person nothing."),
    )
    claimed_by = models.CharField(_("claimed by"), max_length=32, blank=True)
    claim_expires_at = models.DateTimeField(_("claim expires"), null=True, blank=True)

    class Meta:
        verbose_name = _("enrollment")
        verbose_name_plural = _("enrollments")
        ordering = ["-enrolled_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["campaign", "profile", "subject_key"], name="oc_enrollment_unique"
            ),
        ]
        indexes = [
            # The engine's queue: only active rows are indexed.
            models.Index(
                fields=["next_due_at", "id"],
                name="oc_enrollment_due",
                condition=Q(state="active"),
            ),
            models.Index(fields=["profile", "state"], name="oc_enrollment_profile"),
            models.Index(fields=["campaign", "state"], name="oc_enrollment_campaign"),
        ]

    def __str__(self) -> str:
        subject = f" ({self.subject_key})" if self.subject_key else ""
        return f"{self.campaign} / {self.profile_id}{subject}"


class EnrollmentAction(models.TextChoices):
    ENROLLED = "enrolled", _("Enrolled")
    RESTARTED = "restarted", _("Timer restarted by new activity")
    SENT = "sent", _("Message queued")
    SKIPPED = "skipped", _("Step skipped")
    DEFERRED = "deferred", _("Deferred")
    EXITED = "exited", _("Exited")
    COMPLETED = "completed", _("Completed")


class EnrollmentLog(models.Model):
    """One thing that happened to an enrollment, with the engine's reason in words."""

    enrollment = models.ForeignKey(
        Enrollment, verbose_name=_("enrollment"), on_delete=models.CASCADE, related_name="log"
    )
    at = models.DateTimeField(_("time"), default=timezone.now)
    action = models.CharField(_("action"), max_length=16, choices=EnrollmentAction.choices)
    step = models.ForeignKey(
        Step,
        verbose_name=_("step"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    channel = models.CharField(_("channel"), max_length=32, blank=True)
    message = models.ForeignKey(
        "omnichannel.Message",
        verbose_name=_("message"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    detail = models.CharField(_("detail"), max_length=500, blank=True)

    class Meta:
        verbose_name = _("enrollment history entry")
        verbose_name_plural = _("enrollment history")
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["enrollment", "at"], name="oc_enrollment_log")]

    def __str__(self) -> str:
        return f"{self.action} at {self.at:%Y-%m-%d %H:%M}"
