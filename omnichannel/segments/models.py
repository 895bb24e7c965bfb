"""Segments: a name and a tree of conditions over CustomerProfile, plus what evaluating needs.

``Segment.rules`` holds the tree as validated JSON (see ``rules.py``); the derived tables
(``RfmScore``, ``EngagementScore``, ``PurchasedProduct``) hold per-profile facts that would cost
too much to compute inside every segment query; ``SegmentSnapshot`` freezes an audience.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import models
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.text import slugify
from django.utils.translation import gettext_lazy as _

from ..profiles.models import CustomerProfile


def empty_rules() -> dict[str, Any]:
    """The rules of a new segment: an empty "all" group, which matches every profile."""
    return {"op": "all", "negate": False, "children": []}


class Segment(models.Model):
    """A named audience: the profiles that match a tree of conditions, evaluated in one query."""

    name = models.CharField(_("name"), max_length=120, unique=True)
    slug = models.SlugField(
        _("slug"),
        max_length=140,
        unique=True,
        blank=True,
        help_text=_("Stable short name for code and URLs; made from the name when left empty."),
    )
    description = models.TextField(_("description"), blank=True)
    rules = models.JSONField(
        _("rules"),
        default=empty_rules,
        blank=True,
        help_text=_(
            'Groups of conditions: {"op": "all"|"any", "negate": false, "children": [...]}. '
            "An empty group matches every profile."
        ),
    )
    ready_made = models.CharField(
        _("ready-made key"),
        max_length=40,
        blank=True,
        help_text=_(
            "Set on the segments the app creates (champions, drifting, ...): "
            "omnichannel_create_segments updates the segment with this key instead of adding "
            "another."
        ),
    )
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("segment")
        verbose_name_plural = _("segments")
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["ready_made"],
                condition=~Q(ready_made=""),
                name="oc_segment_ready_made",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.slug:
            self.slug = self._unique_slug()
        super().save(*args, **kwargs)

    def clean(self) -> None:
        """Validate the rules (errors name the place) and fill the slug."""
        from django.core.exceptions import ValidationError

        from .rules import RuleError, validate_rules

        try:
            self.rules = validate_rules(self.rules, segment_id=self.pk)
        except RuleError as exc:
            raise ValidationError({"rules": exc.messages}) from exc
        if not self.slug:
            self.slug = self._unique_slug()

    def _unique_slug(self) -> str:
        base = slugify(self.name)[:130] or "segment"
        slug, n = base, 2
        others = Segment.objects.exclude(pk=self.pk) if self.pk else Segment.objects.all()
        while others.filter(slug=slug).exists():
            slug, n = f"{base}-{n}", n + 1
        return slug

    def queryset(self, *, now: datetime | None = None) -> QuerySet[CustomerProfile]:
        """The profiles in this segment: one SQL query, nothing filtered in Python.

        Raises ``RuleError`` if the stored rules no longer compile (a condition type that is
        not registered any more, a referenced segment that was deleted or now makes a cycle).
        """
        from .rules import compile_rules

        when = now or timezone.now()
        return CustomerProfile.objects.filter(
            compile_rules(self.rules, now=when, segment_id=self.pk)
        )

    def count(self, *, now: datetime | None = None) -> int:
        """How many profiles are in this segment (one ``SELECT COUNT(*)``)."""
        return self.queryset(now=now).count()


class SegmentSnapshot(models.Model):
    """A segment's members frozen at one moment (e.g. the fixed audience of a mass send)."""

    segment = models.ForeignKey(
        Segment, verbose_name=_("segment"), on_delete=models.CASCADE, related_name="snapshots"
    )
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    size = models.PositiveIntegerField(_("members"), default=0)
    note = models.CharField(_("note"), max_length=255, blank=True)
    rules = models.JSONField(
        _("rules used"),
        default=dict,
        blank=True,
        help_text=_("The segment's rules when the snapshot was taken."),
    )

    class Meta:
        verbose_name = _("segment snapshot")
        verbose_name_plural = _("segment snapshots")
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.segment} at {self.created_at:%Y-%m-%d %H:%M} ({self.size})"

    def profiles(self) -> QuerySet[CustomerProfile]:
        """The profiles frozen in this snapshot (those since deleted are gone)."""
        return CustomerProfile.objects.filter(
            pk__in=SegmentSnapshotMember.objects.filter(snapshot=self).values("profile_id")
        )


class SegmentSnapshotMember(models.Model):
    """One profile in one snapshot."""

    snapshot = models.ForeignKey(
        SegmentSnapshot,
        verbose_name=_("snapshot"),
        on_delete=models.CASCADE,
        related_name="members",
    )
    profile = models.ForeignKey(
        CustomerProfile,
        verbose_name=_("profile"),
        on_delete=models.CASCADE,
        related_name="segment_snapshot_memberships",
    )

    class Meta:
        verbose_name = _("segment snapshot member")
        verbose_name_plural = _("segment snapshot members")
        constraints = [
            models.UniqueConstraint(
                fields=["snapshot", "profile"], name="oc_segment_snapshot_member"
            ),
        ]
        indexes = [models.Index(fields=["profile"], name="oc_snapshot_member_profile")]

    def __str__(self) -> str:
        return f"{self.profile_id} in snapshot {self.snapshot_id}"


class RfmGroup(models.TextChoices):
    """Named RFM groups of the standard recency x frequency grid. Values are stored."""

    CHAMPIONS = "champions", _("Champions")
    LOYAL = "loyal", _("Loyal")
    POTENTIAL_LOYALISTS = "potential_loyalists", _("Potential loyalists")
    NEW = "new", _("New")
    PROMISING = "promising", _("Promising")
    NEEDS_ATTENTION = "needs_attention", _("Needs attention")
    ABOUT_TO_SLEEP = "about_to_sleep", _("About to sleep")
    AT_RISK = "at_risk", _("At risk")
    CANT_LOSE_THEM = "cant_lose_them", _("Can't lose them")
    HIBERNATING = "hibernating", _("Hibernating")
    LOST = "lost", _("Lost")


class RfmScore(models.Model):
    """Recency, frequency and monetary quintiles (1..5) of a profile with at least one order.

    Rewritten as a whole by ``scores.refresh_rfm``; a profile without orders has no row.
    """

    # One-to-one: a profile merge leaves these alone (the merged profile's row goes with it)
    # and the next refresh scores the survivor.
    profile = models.OneToOneField(
        CustomerProfile,
        verbose_name=_("profile"),
        primary_key=True,
        on_delete=models.CASCADE,
        related_name="rfm_score",
    )
    recency = models.PositiveSmallIntegerField(
        _("recency"), help_text=_("1 (ordered longest ago) to 5 (most recently).")
    )
    frequency = models.PositiveSmallIntegerField(
        _("frequency"), help_text=_("1 (fewest orders) to 5 (most).")
    )
    monetary = models.PositiveSmallIntegerField(
        _("monetary"), help_text=_("1 (spent least) to 5 (most).")
    )
    group = models.CharField(_("RFM group"), max_length=32, choices=RfmGroup.choices)
    computed_at = models.DateTimeField(_("computed"))

    class Meta:
        verbose_name = _("RFM score")
        verbose_name_plural = _("RFM scores")
        indexes = [
            models.Index(fields=["group"], name="oc_rfm_group"),
            models.Index(fields=["recency", "frequency", "monetary"], name="oc_rfm_scores"),
        ]

    def __str__(self) -> str:
        return f"R{self.recency} F{self.frequency} M{self.monetary} ({self.group})"


class EngagementScore(models.Model):
    """Where and when a profile engages with our messages, from its recent messages.

    Rewritten as a whole by ``scores.refresh_engagement``; only profiles with at least one
    opened or clicked message in the window have a row.
    """

    profile = models.OneToOneField(
        CustomerProfile,
        verbose_name=_("profile"),
        primary_key=True,
        on_delete=models.CASCADE,
        related_name="engagement_score",
    )
    preferred_channel = models.CharField(
        _("preferred channel"),
        max_length=32,
        help_text=_("Channel with the best smoothed engagement rate: engaged / (sent + 2)."),
    )
    best_hour = models.PositiveSmallIntegerField(
        _("best send hour"),
        null=True,
        blank=True,
        help_text=_("Hour of the day (0-23, shop time zone) of most first opens or clicks."),
    )
    engaged_messages = models.PositiveIntegerField(_("engaged messages"), default=0)
    computed_at = models.DateTimeField(_("computed"))

    class Meta:
        verbose_name = _("engagement score")
        verbose_name_plural = _("engagement scores")
        indexes = [
            models.Index(fields=["preferred_channel"], name="oc_engagement_channel"),
            models.Index(fields=["best_hour"], name="oc_engagement_hour"),
        ]

    def __str__(self) -> str:
        return f"{self.preferred_channel} at {self.best_hour}h"


class PurchasedProduct(models.Model):
    """A product a person bought, online or offline (derived from ORDER_PLACED payload lines).

    The order lines live in the event's JSON payload, which neither database can index by
    product portably; this table makes "bought product X within D days" an index lookup.
    Maintained by the receivers in ``segments.receivers`` and ``purchases.refresh_purchased_
    products``.
    """

    profile = models.ForeignKey(
        CustomerProfile,
        verbose_name=_("profile"),
        on_delete=models.CASCADE,
        related_name="purchased_products",
    )
    product = models.ForeignKey(
        "catalogue.Product",
        verbose_name=_("product"),
        on_delete=models.CASCADE,
        related_name="+",
    )
    orders_count = models.PositiveIntegerField(_("orders"), default=0)
    last_bought_at = models.DateTimeField(_("last bought"))

    #: Derived rows: a merge drops the merged profile's rows; the survivor's are recomputed.
    derived_from_events = True

    class Meta:
        verbose_name = _("purchased product")
        verbose_name_plural = _("purchased products")
        constraints = [
            models.UniqueConstraint(fields=["profile", "product"], name="oc_purchased_product")
        ]
        indexes = [
            models.Index(fields=["product", "last_bought_at"], name="oc_purchased_prod_time"),
        ]

    def __str__(self) -> str:
        return f"{self.profile_id} bought {self.product_id}"
