"""Messages and what happened to them; suppressions; the demo outbox; provider throttles.

A ``Message`` is one send to one person on one channel: it is created ``queued`` with its
rendered content and cost, claimed (``sending``) before the provider is called, and then moves
through the statuses the provider and our tracking links report. ``MessageStatusChange`` keeps
every report with its time; the ``*_at`` columns on Message keep the first time of each, which
is what segments and analytics query.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from ..profiles.models import CustomerProfile, Purpose


class MessageStatus(models.TextChoices):
    """Where a message stands. Values are stored: never rename them."""

    QUEUED = "queued", _("Queued")
    SENDING = "sending", _("Sending")
    SENT = "sent", _("Sent")
    DELIVERED = "delivered", _("Delivered")
    OPENED = "opened", _("Opened")
    CLICKED = "clicked", _("Clicked")
    FAILED = "failed", _("Failed")
    BOUNCED = "bounced", _("Bounced")
    COMPLAINED = "complained", _("Complained")
    SUPPRESSED = "suppressed", _("Suppressed")
    UNSUBSCRIBED = "unsubscribed", _("Unsubscribed")


#: The happy path in order: a report moves ``status`` forward, never back (a late "delivered"
#: after "opened" is kept in the history and in delivered_at, but the status stays "opened").
PROGRESS = [
    MessageStatus.QUEUED,
    MessageStatus.SENDING,
    MessageStatus.SENT,
    MessageStatus.DELIVERED,
    MessageStatus.OPENED,
    MessageStatus.CLICKED,
]

#: Outcomes that end a message; they replace any progress status except each other.
#: Unsubscribing after a click still shows as unsubscribed: it is the more important fact.
OUTCOMES = [
    MessageStatus.FAILED,
    MessageStatus.BOUNCED,
    MessageStatus.COMPLAINED,
    MessageStatus.SUPPRESSED,
    MessageStatus.UNSUBSCRIBED,
]

#: Statuses meaning the person saw the message (engagement).
ENGAGED = (MessageStatus.OPENED, MessageStatus.CLICKED)


class Message(models.Model):
    """One send to one person on one channel, with its content, cost and status history."""

    uuid = models.UUIDField(_("public id"), default=uuid.uuid4, unique=True, editable=False)
    profile = models.ForeignKey(
        CustomerProfile,
        verbose_name=_("profile"),
        null=True,
        blank=True,
        # Erasing a person keeps the anonymous message for the campaign's figures.
        on_delete=models.SET_NULL,
        related_name="messages",
    )
    channel = models.CharField(
        _("channel"),
        max_length=32,
        db_index=True,
        help_text=_("Name of the channel in OMNICHANNEL['CHANNELS'], e.g. email or sms."),
    )
    purpose = models.CharField(_("purpose"), max_length=20, choices=Purpose.choices)
    address = models.CharField(
        _("address"),
        max_length=255,
        blank=True,
        help_text=_("Email address, phone number (E.164), chat id or push devices."),
    )
    template = models.CharField(
        _("template"),
        max_length=200,
        blank=True,
        help_text=_("Template key the content was rendered from, e.g. abandoned_basket."),
    )
    language = models.CharField(_("language"), max_length=16, blank=True)
    subject = models.CharField(_("subject or title"), max_length=255, blank=True)
    body_text = models.TextField(_("text"), blank=True)
    body_html = models.TextField(_("HTML"), blank=True)
    data = models.JSONField(
        _("data"),
        default=dict,
        blank=True,
        help_text=_("Channel-specific content: push image and click URL, SMS segments, ..."),
    )
    tags = models.JSONField(_("tags"), default=list, blank=True)
    units = models.PositiveIntegerField(
        _("billable units"),
        default=1,
        help_text=_("What the provider bills: SMS segments, push devices; 1 for an email."),
    )
    cost = models.DecimalField(_("cost"), max_digits=12, decimal_places=5, default=0)
    currency = models.CharField(_("currency"), max_length=3, blank=True)
    dedupe_key = models.CharField(
        _("deduplication key"),
        max_length=200,
        null=True,
        blank=True,
        help_text=_(
            "At most one message per key: a second queue_message with it returns the "
            "first (e.g. one per enrollment and step)."
        ),
    )

    # Campaign messages: which enrollment and step sent it (one message per pair).
    campaign = models.ForeignKey(
        "omnichannel.Campaign",
        verbose_name=_("campaign"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="messages",
    )
    enrollment = models.ForeignKey(
        "omnichannel.Enrollment",
        verbose_name=_("enrollment"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="messages",
    )
    step = models.ForeignKey(
        "omnichannel.Step",
        verbose_name=_("step"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="messages",
    )
    variant = models.ForeignKey(
        "omnichannel.Variant",
        verbose_name=_("variant"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="messages",
    )
    needs_render = models.BooleanField(
        _("to be rendered"),
        default=False,
        help_text=_(
            "Created by the campaign engine without content: rendered by the delivery task, "
            "so the engine creates rows in bulk and rendering runs in the delivery workers."
        ),
    )

    status = models.CharField(
        _("status"), max_length=16, choices=MessageStatus.choices, default=MessageStatus.QUEUED
    )
    status_changed_at = models.DateTimeField(_("status changed"), default=timezone.now)
    provider = models.CharField(_("provider"), max_length=64, blank=True)
    provider_message_id = models.CharField(_("provider message id"), max_length=255, blank=True)
    error = models.TextField(_("error"), blank=True)
    attempts = models.PositiveSmallIntegerField(_("send attempts"), default=0)
    next_attempt_at = models.DateTimeField(
        _("next attempt"),
        null=True,
        blank=True,
        help_text=_("When a queued message is due (after a temporary failure, or scheduled)."),
    )
    claimed_by = models.CharField(
        _("claimed by"),
        max_length=32,
        blank=True,
        help_text=_("The delivery run that claimed this message for sending."),
    )
    lease_expires_at = models.DateTimeField(
        _("sending lease expires"),
        null=True,
        blank=True,
        help_text=_("A message still 'sending' after this is marked failed, never resent."),
    )

    created_at = models.DateTimeField(_("created"), default=timezone.now, db_index=True)
    queued_at = models.DateTimeField(_("queued"), null=True, blank=True)
    sending_at = models.DateTimeField(_("sending"), null=True, blank=True)
    sent_at = models.DateTimeField(_("sent"), null=True, blank=True)
    delivered_at = models.DateTimeField(_("delivered"), null=True, blank=True)
    opened_at = models.DateTimeField(_("opened"), null=True, blank=True)
    clicked_at = models.DateTimeField(_("clicked"), null=True, blank=True)
    failed_at = models.DateTimeField(_("failed"), null=True, blank=True)
    bounced_at = models.DateTimeField(_("bounced"), null=True, blank=True)
    complained_at = models.DateTimeField(_("complained"), null=True, blank=True)
    suppressed_at = models.DateTimeField(_("suppressed"), null=True, blank=True)
    unsubscribed_at = models.DateTimeField(_("unsubscribed"), null=True, blank=True)

    class Meta:
        verbose_name = _("message")
        verbose_name_plural = _("messages")
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["dedupe_key"], name="oc_message_dedupe_key"),
            # A second send of a step to an enrollment is impossible, whoever tries it.
            models.UniqueConstraint(
                fields=["enrollment", "step"],
                condition=Q(enrollment__isnull=False, step__isnull=False),
                name="oc_message_enrollment_step",
            ),
        ]
        indexes = [
            # The delivery queue: only queued rows are indexed.
            models.Index(
                fields=["next_attempt_at", "id"],
                name="oc_message_due",
                condition=Q(status="queued"),
            ),
            models.Index(
                fields=["lease_expires_at"],
                name="oc_message_sending",
                condition=Q(status="sending"),
            ),
            models.Index(fields=["provider_message_id"], name="oc_message_provider_id"),
            models.Index(fields=["profile", "channel", "created_at"], name="oc_message_profile"),
            # Frequency caps: a person's recent marketing messages.
            models.Index(fields=["profile", "purpose", "created_at"], name="oc_message_caps"),
            # Engagement conditions of segments ("opened email within 90 days").
            models.Index(
                fields=["channel", "opened_at"],
                name="oc_message_opened",
                condition=Q(opened_at__isnull=False),
            ),
            models.Index(
                fields=["channel", "clicked_at"],
                name="oc_message_clicked",
                condition=Q(clicked_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.channel} to {self.address or '?'}: {self.subject or self.template}"

    @property
    def is_engaged(self) -> bool:
        return self.opened_at is not None or self.clicked_at is not None


#: The reports the attribution job re-checks orders after (``oc_msg_history_engagement``).
ATTRIBUTION_REPORT_STATUSES = ["sent", "delivered", "opened", "clicked"]


class MessageStatusChange(models.Model):
    """One report about a message: our own (queued, sent) or a provider's (delivered, opened)."""

    message = models.ForeignKey(
        Message, verbose_name=_("message"), on_delete=models.CASCADE, related_name="history"
    )
    status = models.CharField(_("status"), max_length=16, choices=MessageStatus.choices)
    occurred_at = models.DateTimeField(_("time"), default=timezone.now)
    recorded_at = models.DateTimeField(_("recorded"), default=timezone.now)
    source = models.CharField(
        _("source"),
        max_length=64,
        blank=True,
        help_text=_("Who reported it: us, a provider's webhook, a tracking link."),
    )
    detail = models.JSONField(_("detail"), default=dict, blank=True)

    class Meta:
        verbose_name = _("message status change")
        verbose_name_plural = _("message status changes")
        ordering = ["occurred_at", "id"]
        indexes = [
            models.Index(fields=["message", "occurred_at"], name="oc_msg_history"),
            # Attribution re-checks orders after late reports: those recorded since its last
            # run. Only the reports it reads are indexed (sent counts as delivered on channels
            # without delivery reports); the queued rows the engine writes in bulk are not.
            models.Index(
                fields=["recorded_at"],
                name="oc_msg_history_engagement",
                condition=Q(status__in=ATTRIBUTION_REPORT_STATUSES),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.status} at {self.occurred_at:%Y-%m-%d %H:%M:%S}"


class SuppressionReason(models.TextChoices):
    BOUNCED = "bounced", _("Hard bounce")
    COMPLAINED = "complained", _("Spam complaint")
    INVALID = "invalid", _("Invalid address")
    MANUAL = "manual", _("Added by staff")


class Suppression(models.Model):
    """An address we must not send marketing to (or nothing at all) on a channel."""

    channel = models.CharField(_("channel"), max_length=32)
    address = models.CharField(_("address"), max_length=255)
    reason = models.CharField(_("reason"), max_length=16, choices=SuppressionReason.choices)
    transactional_too = models.BooleanField(
        _("transactional too"),
        default=False,
        help_text=_("Also block transactional messages (e.g. the address does not exist)."),
    )
    message = models.ForeignKey(
        Message,
        verbose_name=_("message"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    detail = models.CharField(_("detail"), max_length=500, blank=True)
    created_at = models.DateTimeField(_("created"), default=timezone.now)

    class Meta:
        verbose_name = _("suppression")
        verbose_name_plural = _("suppressions")
        constraints = [
            models.UniqueConstraint(fields=["channel", "address"], name="oc_suppression_address"),
        ]

    def __str__(self) -> str:
        return f"{self.channel}: {self.address} ({self.get_reason_display()})"


class OutboxEntry(models.Model):
    """What a channel in outbox mode would have sent: the demo shop's inbox for staff."""

    message = models.ForeignKey(
        Message,
        verbose_name=_("message"),
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="outbox_entries",
    )
    channel = models.CharField(_("channel"), max_length=32, db_index=True)
    address = models.CharField(_("address"), max_length=255, blank=True)
    subject = models.CharField(_("subject or title"), max_length=255, blank=True)
    body_text = models.TextField(_("text"), blank=True)
    body_html = models.TextField(_("HTML"), blank=True)
    payload = models.JSONField(
        _("payload"),
        default=dict,
        blank=True,
        help_text=_("What the provider's API would have received (headers, JSON body)."),
    )
    created_at = models.DateTimeField(_("created"), default=timezone.now, db_index=True)

    class Meta:
        verbose_name = _("outbox entry")
        verbose_name_plural = _("outbox")
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.channel} to {self.address}: {self.subject}"


class ChannelThrottle(models.Model):
    """A provider told us to slow down (HTTP 429): nothing goes on this channel until then."""

    channel = models.CharField(_("channel"), max_length=32, unique=True)
    paused_until = models.DateTimeField(_("paused until"))
    reason = models.CharField(_("reason"), max_length=500, blank=True)
    consecutive = models.PositiveIntegerField(
        _("consecutive 429s"), default=0, help_text=_("Doubles the pause each time, up to a cap.")
    )

    class Meta:
        verbose_name = _("channel throttle")
        verbose_name_plural = _("channel throttles")

    def __str__(self) -> str:
        return f"{self.channel} paused until {self.paused_until:%H:%M:%S}"
