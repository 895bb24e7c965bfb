"""Attribution of orders (online and offline) to the messages that earned them.

Every ``order_placed`` event the attribution job has looked at gets one ``Conversion`` row, so
the job knows what it has done; ``message`` is empty when no message touched the order within
the windows. At most one message wins an order; every other message that touched it within the
windows is kept as an ``Influence``.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from ..profiles.models import CustomerProfile, Event


class AttributionModel(models.TextChoices):
    """Which engagement gave a message the order: the rule that won, stored per conversion."""

    CLICK = "click", _("Clicked within the click window")
    OPEN = "open", _("Opened within the open window")
    DELIVERY = "delivery", _("Delivered within the delivery window (no opens reported)")
    NONE = "none", _("No message touched the order")


class Conversion(models.Model):
    """One order and the message it is attributed to (if any), with its revenue."""

    order_event = models.OneToOneField(
        Event,
        verbose_name=_("order event"),
        on_delete=models.CASCADE,
        related_name="conversion",
        help_text=_("The order_placed event, online or offline: one conversion per order."),
    )
    order = models.ForeignKey(
        "order.Order",
        verbose_name=_("Oscar order"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text=_("Empty for an offline order."),
    )
    profile = models.ForeignKey(
        CustomerProfile,
        verbose_name=_("profile"),
        on_delete=models.CASCADE,
        related_name="conversions",
    )
    ordered_at = models.DateTimeField(_("ordered"))
    revenue = models.DecimalField(_("revenue"), max_digits=14, decimal_places=2, default=0)
    currency = models.CharField(_("currency"), max_length=3, blank=True)
    model = models.CharField(
        _("attributed by"),
        max_length=16,
        choices=AttributionModel.choices,
        default=AttributionModel.NONE,
    )
    message = models.ForeignKey(
        "omnichannel.Message",
        verbose_name=_("message"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="conversions",
    )
    # Copied from the message so the reports group without joining it.
    campaign = models.ForeignKey(
        "omnichannel.Campaign",
        verbose_name=_("campaign"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="conversions",
    )
    step = models.ForeignKey(
        "omnichannel.Step",
        verbose_name=_("step"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="conversions",
    )
    variant = models.ForeignKey(
        "omnichannel.Variant",
        verbose_name=_("variant"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="conversions",
    )
    channel = models.CharField(_("channel"), max_length=32, blank=True)
    touched_at = models.DateTimeField(
        _("engagement time"),
        null=True,
        blank=True,
        help_text=_("When the winning message was clicked, opened or delivered."),
    )
    attributed_at = models.DateTimeField(_("attributed"), default=timezone.now)

    class Meta:
        verbose_name = _("conversion")
        verbose_name_plural = _("conversions")
        ordering = ["-ordered_at", "-id"]
        indexes = [
            models.Index(
                fields=["campaign", "ordered_at"],
                name="oc_conversion_campaign",
                condition=Q(campaign__isnull=False),
            ),
            models.Index(fields=["ordered_at"], name="oc_conversion_time"),
            models.Index(fields=["message"], name="oc_conversion_message"),
            models.Index(fields=["profile", "ordered_at"], name="oc_conversion_profile"),
            # The attribution job's "last run" (the latest attributed_at).
            models.Index(fields=["attributed_at"], name="oc_conversion_attributed"),
        ]

    def __str__(self) -> str:
        return f"order event {self.order_event_id}: {self.model}"


class Influence(models.Model):
    """A message that touched an order within the windows without winning it."""

    conversion = models.ForeignKey(
        Conversion,
        verbose_name=_("conversion"),
        on_delete=models.CASCADE,
        related_name="influences",
    )
    message = models.ForeignKey(
        "omnichannel.Message",
        verbose_name=_("message"),
        on_delete=models.CASCADE,
        related_name="influences",
    )
    model = models.CharField(_("engagement"), max_length=16, choices=AttributionModel.choices)
    touched_at = models.DateTimeField(_("engagement time"))

    class Meta:
        verbose_name = _("influence")
        verbose_name_plural = _("influences")
        constraints = [
            models.UniqueConstraint(fields=["conversion", "message"], name="oc_influence_unique"),
        ]
        indexes = [models.Index(fields=["message"], name="oc_influence_message")]

    def __str__(self) -> str:
        return f"message {self.message_id} -> conversion {self.conversion_id}"


class AttributionState(models.Model):
    """The attribution job's own bookmark (one row): how far late reports have been re-checked.

    Only a complete, unrestricted re-check pass moves it, so a run limited with ``since``, a
    failed batch or a run that stopped early never skips reports the next run must look at.
    """

    reports_checked_until = models.DateTimeField(
        _("reports re-checked until"),
        null=True,
        blank=True,
        help_text=_("Engagement reports recorded before this have been re-checked."),
    )
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("attribution state")
        verbose_name_plural = _("attribution state")

    def __str__(self) -> str:
        return f"re-checked until {self.reports_checked_until}"
