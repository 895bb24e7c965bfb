"""Condition types of segment rules, and the registry that names them.

A condition type turns validated ``params`` into a ``Q`` over ``CustomerProfile`` built only of
column lookups and ``Exists`` subqueries (no annotations), so that any tree of conditions joined
with ``&``, ``|`` and ``~`` stays ONE SQL query, and a negation is the exact complement (``Exists``
is never NULL; nullable columns are compared through Django lookups, which handle NULL under
``~``).

A shop adds its own type by subclassing ``ConditionType`` and registering it, typically from its
``AppConfig.ready()``::

    from omnichannel.segments.conditions import ConditionType, registry

    @registry.register
    class LanguageCondition(ConditionType):
        key = "myshop_language"          # stored in the rules: never rename
        label = "Language"
        category = "Profile"
        form_class = LanguageForm        # a django.forms.Form that cleans the params
        def to_q(self, params, *, now):
            return Q(language=params["language"])
        def describe(self, params):
            return f"Language is {params['language']}"

The built-in types are registered explicitly at the bottom of this module.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

from django import forms
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils.functional import Promise
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from oscar.core.loading import get_model

from ..conf import app_settings
from ..profiles.models import (
    Channel,
    Consent,
    Event,
    EventSource,
    EventType,
    Identity,
    IdentityKind,
    PurchasedCategory,
    Purpose,
)

StrOrPromise = str | Promise


class Category:
    """Names of the condition groups the admin shows (a type may use its own)."""

    PROFILE = _("Profile")
    BEHAVIOUR = _("Behaviour")
    PURCHASES = _("Purchases")
    RFM = _("RFM")
    ENGAGEMENT = _("Channel engagement")
    SEGMENTS = _("Segments")


# --- Parameter fields that name other objects -------------------------------------------------
class ReferenceField(forms.IntegerField):
    """The id of another object. ``clean`` only checks the shape (no query, so compiling stays
    one query); ``check_exists`` is called by ``validate_rules`` when the rules are saved."""

    param_type: ClassVar[str] = "integer"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 1)
        super().__init__(**kwargs)

    def queryset(self) -> QuerySet:
        raise NotImplementedError(f"{type(self).__name__}.queryset must be implemented")

    def check_exists(self, value: int) -> None:
        if not self.queryset().filter(pk=value).exists():
            raise ValidationError(
                gettext("%(what)s %(id)s does not exist.")
                % {"what": self.param_type.capitalize(), "id": value}
            )


class ProductField(ReferenceField):
    param_type = "product"

    def queryset(self) -> QuerySet:
        return get_model("catalogue", "Product")._default_manager.all()


class CategoryField(ReferenceField):
    param_type = "category"

    def queryset(self) -> QuerySet:
        return get_model("catalogue", "Category")._default_manager.all()

    def check_exists(self, value: int) -> None:
        # One fresh query, which also refreshes the subtree cache for the evaluation that
        # usually follows (a live preview: validate, then count).
        if not category_subtree(value, refresh=True):
            raise ValidationError(
                gettext("%(what)s %(id)s does not exist.") % {"what": "Category", "id": value}
            )


class SegmentField(ReferenceField):
    param_type = "segment"

    def queryset(self) -> QuerySet:
        from .models import Segment

        return Segment.objects.all()


def channel_choices() -> list[tuple[str, str]]:
    """Names of the configured channels (OMNICHANNEL["CHANNELS"] keys), as stored on Message."""
    configured = app_settings.CHANNELS
    names = list(configured) if isinstance(configured, dict) else []
    return [(name, name.replace("_", " ").capitalize()) for name in names]


# --- The base class ---------------------------------------------------------------------------
class ConditionType:
    """One kind of condition: validates its params and compiles them to a Q over profiles."""

    #: Stored in the rules: snake_case, never renamed.
    key: ClassVar[str]
    label: ClassVar[StrOrPromise]
    category: ClassVar[StrOrPromise] = Category.PROFILE
    description: ClassVar[StrOrPromise] = ""
    #: Validates and cleans ``params``; its fields also describe them to the admin UI.
    form_class: ClassVar[type[forms.Form]]

    def clean_params(self, params: Any) -> dict[str, Any]:
        """Cleaned params (Python values); ValidationError with a dict of field -> messages.

        Unknown parameter names are refused, so a typo never silently widens a segment.
        """
        if not isinstance(params, dict):
            raise ValidationError({"__all__": [gettext("must be an object")]})
        form = self.form_class(data=self.form_data(params))
        errors: dict[str, list[str]] = {}
        for name, value in params.items():
            field = form.fields.get(name)
            if field is None:
                errors[str(name)] = [gettext("unknown parameter")]
            elif not _well_formed(field, value):
                errors[name] = [gettext("malformed value %(value)s") % {"value": _short(value)}]
        if errors:
            raise ValidationError(errors)
        if not form.is_valid():
            for name, messages in form.errors.items():
                errors.setdefault(name, []).extend(messages)
        if errors:
            raise ValidationError(errors)
        return dict(form.cleaned_data)

    def form_data(self, params: dict[str, Any]) -> dict[str, Any]:
        """Params as form data: JSON ``null`` becomes blank, lists stay lists."""
        return {name: value for name, value in params.items() if value is not None}

    def to_json(self, cleaned: dict[str, Any]) -> dict[str, Any]:
        """Cleaned params as JSON for storage (Decimal as a string)."""
        return {
            name: (str(value) if isinstance(value, Decimal) else value)
            for name, value in cleaned.items()
        }

    def to_q(self, params: dict[str, Any], *, now: datetime) -> Q:
        """The condition as a Q over CustomerProfile, from cleaned params."""
        raise NotImplementedError(f"{type(self).__name__}.to_q must be implemented")

    def to_negated_q(self, params: dict[str, Any], *, now: datetime) -> Q:
        """The exact complement of ``to_q``; override when another SQL shape is faster.

        Negations in the rules are pushed down to the conditions, so this is what a negated
        condition, or a condition inside a negated group, compiles to.
        """
        return ~self.to_q(params, now=now)

    def describe(self, params: dict[str, Any]) -> str:
        """A sentence for people, e.g. "Orders count at least 3"."""
        return str(self.label)


def _well_formed(field: forms.Field, value: Any) -> bool:
    """JSON shapes a field accepts: a list of strings for multiple choices, else a scalar."""
    if value is None:
        return True
    if isinstance(field, forms.MultipleChoiceField):
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if isinstance(field, forms.BooleanField):
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False  # True is an int to Python, never a number or a choice here
    return isinstance(value, str | int | float | Decimal)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- The registry -----------------------------------------------------------------------------
class ConditionRegistry:
    """Condition types by key. Built-ins are registered below; shops add theirs in ready()."""

    def __init__(self) -> None:
        self._types: dict[str, ConditionType] = {}

    def register(self, cls: type[ConditionType]) -> type[ConditionType]:
        """Register a ConditionType subclass (usable as a class decorator)."""
        if not (isinstance(cls, type) and issubclass(cls, ConditionType)):
            raise ImproperlyConfigured(f"{cls!r} is not a ConditionType subclass")
        key = getattr(cls, "key", None)
        if not isinstance(key, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", key):
            raise ImproperlyConfigured(
                f"{cls.__name__}.key must be a snake_case string of at most 64 characters"
            )
        if key in self._types:
            raise ImproperlyConfigured(
                f"condition type {key!r} is already registered by {type(self._types[key]).__name__}"
            )
        if not isinstance(getattr(cls, "form_class", None), type) or not issubclass(
            cls.form_class, forms.BaseForm
        ):
            raise ImproperlyConfigured(f"{cls.__name__}.form_class must be a django Form class")
        self._types[key] = cls()
        return cls

    def unregister(self, key: str) -> None:
        self._types.pop(key, None)

    def get(self, key: str) -> ConditionType:
        """The registered condition type; KeyError if none has this key."""
        return self._types[key]

    def __contains__(self, key: object) -> bool:
        return key in self._types

    def all(self) -> list[ConditionType]:
        return list(self._types.values())

    def choices(self) -> list[tuple[str, str]]:
        return [(key, str(condition.label)) for key, condition in self._types.items()]

    @contextmanager
    def temporarily(self, cls: type[ConditionType]) -> Iterator[type[ConditionType]]:
        """Register ``cls`` for the duration of a ``with`` block (tests)."""
        self.register(cls)
        try:
            yield cls
        finally:
            self.unregister(cls.key)


registry = ConditionRegistry()


def param_type(field: forms.Field) -> str:
    """The admin UI's name for the kind of input a form field wants."""
    if isinstance(field, ReferenceField):
        return field.param_type
    if isinstance(field, forms.MultipleChoiceField):
        return "multichoice"
    if isinstance(field, forms.ChoiceField):
        return "choice"
    if isinstance(field, forms.BooleanField):
        return "boolean"
    if isinstance(field, forms.DecimalField):
        return "decimal"
    if isinstance(field, forms.IntegerField):
        return "integer"
    return "text"


def _json_initial(value: Any) -> Any:
    if callable(value):
        value = value()
    return str(value) if isinstance(value, Decimal) else value


def condition_catalog() -> list[dict[str, Any]]:
    """Every registered condition type and its params, for the admin's rule builder."""
    catalog = []
    for condition in registry.all():
        form = condition.form_class()
        params = []
        for name, field in form.fields.items():
            choices = None
            if isinstance(field, forms.ChoiceField):
                choices = [[value, str(label)] for value, label in field.choices if value != ""]
            params.append(
                {
                    "name": name,
                    "label": str(field.label or name),
                    "type": param_type(field),
                    "required": field.required,
                    "choices": choices,
                    "help": str(field.help_text or ""),
                    "initial": _json_initial(field.initial),
                }
            )
        catalog.append(
            {
                "key": condition.key,
                "label": str(condition.label),
                "category": str(condition.category),
                "description": str(condition.description),
                "params": params,
            }
        )
    return catalog


# --- Helpers shared by the built-ins ----------------------------------------------------------
def _profile_exists(queryset: QuerySet) -> Q:
    """``EXISTS (rows of queryset for this profile)`` as a Q."""
    return Q(Exists(queryset.filter(profile=OuterRef("pk"))))


def _range_text(params: dict[str, Any], unit: str = "") -> str:
    low, high = params.get("min"), params.get("max")
    suffix = f" {unit}" if unit else ""
    if low is not None and high is not None:
        if low == high:
            return gettext("exactly %(n)s") % {"n": low} + suffix
        return gettext("between %(low)s and %(high)s") % {"low": low, "high": high} + suffix
    if low is not None:
        return gettext("at least %(n)s") % {"n": low} + suffix
    return gettext("at most %(n)s") % {"n": high} + suffix


#: category id -> (expires at, ids of the category and its descendants)
_subtrees: dict[int, tuple[float, tuple[int, ...]]] = {}
#: How long a process trusts a category's subtree. Saving or deleting a category clears the
#: cache of the process that did it; other processes see the change within this time.
SUBTREE_CACHE_SECONDS = 300.0


def category_subtree(category_id: int, *, refresh: bool = False) -> list[int]:
    """Ids of a category and its descendants (treebeard path prefix), cached per process.

    Literal ids rather than a subquery on the path: PostgreSQL cannot estimate
    ``path LIKE (subquery) || '%'`` and then assumes one category, which leads it to plans
    (nested loops, unshared hashes) several times slower on a large shop. The lookup is one
    small query the first time a category is used in a process, then none for
    ``SUBTREE_CACHE_SECONDS``.
    """
    now = time.monotonic()
    cached = None if refresh else _subtrees.get(category_id)
    if cached is not None and cached[0] > now:
        return list(cached[1])
    Category_ = get_model("catalogue", "Category")
    path = Category_._default_manager.filter(pk=category_id).values("path")[:1]
    ids = tuple(
        Category_._default_manager.filter(path__startswith=Subquery(path))
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    _subtrees[category_id] = (now + SUBTREE_CACHE_SECONDS, ids)
    return list(ids)


def forget_category_subtrees(**kwargs: Any) -> None:
    """Clear the subtree cache (connected to Category's post_save and post_delete)."""
    _subtrees.clear()


def products_in_category(category_id: int) -> QuerySet:
    """Ids of the products in a category or below it, and of their variants (subquery)."""
    Product = get_model("catalogue", "Product")
    ProductCategory = get_model("catalogue", "ProductCategory")
    in_tree = ProductCategory._default_manager.filter(
        category_id__in=category_subtree(category_id)
    ).values("product_id")
    # A variant belongs to its parent's categories: one IN over COALESCE(parent, id), which
    # PostgreSQL hashes once, rather than an OR of two subqueries.
    return (
        Product._default_manager.alias(own=Coalesce("parent_id", "pk"))
        .filter(own__in=in_tree)
        .values("pk")
    )


def product_and_variants(product_id: int) -> QuerySet:
    """Ids of a product and, if it is a parent, of its variants (subquery)."""
    Product = get_model("catalogue", "Product")
    return Product._default_manager.filter(Q(pk=product_id) | Q(parent_id=product_id)).values("pk")


def _object_name(model_label: tuple[str, str], pk: Any) -> str:
    model = get_model(*model_label)
    obj = model._default_manager.filter(pk=pk).first() if pk else None
    return f"“{obj}”" if obj is not None else f"#{pk}"


class ParamsForm(forms.Form):
    """A params form whose optional fields in ``defaults`` take that value when left out."""

    defaults: ClassVar[dict[str, Any]] = {}

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for name, value in self.defaults.items():
            if name in cleaned and cleaned[name] in (None, ""):
                cleaned[name] = value
        return cleaned


# --- Profile facts ----------------------------------------------------------------------------
class IntRangeForm(forms.Form):
    min = forms.IntegerField(label=_("at least"), required=False, min_value=0)
    max = forms.IntegerField(label=_("at most"), required=False, min_value=0)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        low, high = cleaned.get("min"), cleaned.get("max")
        if "min" in cleaned and "max" in cleaned and low is None and high is None:
            raise ValidationError(_('Give "at least", "at most" or both.'))
        if low is not None and high is not None and low > high:
            raise ValidationError(_('"at least" must not be greater than "at most".'))
        return cleaned


class MoneyRangeForm(IntRangeForm):
    min = forms.DecimalField(
        label=_("at least"), required=False, min_value=0, max_digits=14, decimal_places=2
    )
    max = forms.DecimalField(
        label=_("at most"), required=False, min_value=0, max_digits=14, decimal_places=2
    )


class DaysRangeForm(IntRangeForm):
    min = forms.IntegerField(label=_("at least (days)"), required=False, min_value=0)
    max = forms.IntegerField(label=_("at most (days)"), required=False, min_value=0)


class FieldRangeCondition(ConditionType):
    """A number column of CustomerProfile between optional bounds."""

    field_name: ClassVar[str]
    form_class = IntRangeForm
    unit: ClassVar[StrOrPromise] = ""

    def to_q(self, params: dict[str, Any], *, now: datetime) -> Q:
        q = Q()
        if params.get("min") is not None:
            q &= Q(**{f"{self.field_name}__gte": params["min"]})
        if params.get("max") is not None:
            q &= Q(**{f"{self.field_name}__lte": params["max"]})
        return q

    def describe(self, params: dict[str, Any]) -> str:
        return f"{self.label} {_range_text(params, str(self.unit))}"


class OrdersCountCondition(FieldRangeCondition):
    key = "orders_count"
    label = _("Orders count")
    description = _("Number of orders placed, online and offline.")
    field_name = "orders_count"


class TotalSpentCondition(FieldRangeCondition):
    key = "total_spent"
    label = _("Total spent")
    description = _("Sum of all orders including tax.")
    field_name = "total_spent"
    form_class = MoneyRangeForm


class AverageOrderValueCondition(FieldRangeCondition):
    key = "average_order_value"
    label = _("Average order value")
    description = _("Total spent divided by the number of orders.")
    field_name = "average_order_value"
    form_class = MoneyRangeForm


class DevicesCountCondition(FieldRangeCondition):
    key = "devices_count"
    label = _("Number of devices")
    description = _("Devices (push tokens) known for the person.")
    field_name = "devices_count"


class DaysSinceCondition(ConditionType):
    """Days since a moment stored on the profile; profiles without it never match."""

    field_name: ClassVar[str]
    form_class = DaysRangeForm

    def to_q(self, params: dict[str, Any], *, now: datetime) -> Q:
        q = Q(**{f"{self.field_name}__isnull": False})
        if params.get("min") is not None:  # at least N days ago: on or before now - N days
            q &= Q(**{f"{self.field_name}__lte": now - timedelta(days=params["min"])})
        if params.get("max") is not None:
            q &= Q(**{f"{self.field_name}__gte": now - timedelta(days=params["max"])})
        return q

    def describe(self, params: dict[str, Any]) -> str:
        return f"{self.label} {_range_text(params)}"


class DaysSinceFirstOrderCondition(DaysSinceCondition):
    key = "days_since_first_order"
    label = _("Days since first order")
    field_name = "first_order_at"


class DaysSinceLastOrderCondition(DaysSinceCondition):
    key = "days_since_last_order"
    label = _("Days since last order")
    field_name = "last_order_at"


class DaysSinceRegistrationCondition(DaysSinceCondition):
    key = "days_since_registration"
    label = _("Days since registration")
    field_name = "registered_at"


class DaysForm(forms.Form):
    days = forms.IntegerField(label=_("days"), min_value=1, max_value=36500, initial=30)


class LastSeenCondition(ConditionType):
    key = "last_seen"
    label = _("Last seen within")
    description = _(
        "Did anything (visit, basket, order, app) in the last N days. Negate it for "
        '"not seen in N days" (includes people never seen).'
    )
    form_class = DaysForm

    def to_q(self, params: dict[str, Any], *, now: datetime) -> Q:
        return Q(last_seen_at__gte=now - timedelta(days=params["days"]))

    def describe(self, params: dict[str, Any]) -> str:
        return gettext("Last seen within %(days)s days") % params


SOURCE_FIELDS = {
    EventSource.WEB: "seen_on_web",
    EventSource.APP: "seen_on_app",
    EventSource.OFFLINE: "seen_offline",
}


class SourcesForm(ParamsForm):
    defaults = {"match": "any"}
    sources = forms.MultipleChoiceField(
        label=_("sources"),
        choices=[(source.value, source.label) for source in SOURCE_FIELDS],
    )
    match = forms.ChoiceField(
        label=_("match"),
        choices=[("any", _("any of them")), ("all", _("all of them"))],
        initial="any",
        required=False,
    )


class SourcesUsedCondition(ConditionType):
    key = "sources_used"
    label = _("Sources used")
    description = _("Web shop, mobile app, offline store.")
    form_class = SourcesForm

    def to_q(self, params: dict[str, Any], *, now: datetime) -> Q:
        q = Q()
        for source in params["sources"]:
            part = Q(**{SOURCE_FIELDS[EventSource(source)]: True})
            q = (q & part) if params["match"] == "all" else (q | part)
        return q

    def describe(self, params: dict[str, Any]) -> str:
        names = ", ".join(str(EventSource(source).label) for source in params["sources"])
        word = gettext("all of") if params["match"] == "all" else gettext("any of")
        return gettext("Used %(word)s %(names)s") % {"word": word, "names": names}


CONTACT_KINDS = [
    ("email", _("Email address")),
    ("phone", _("Phone number")),
    ("push", _("Push device (app or browser)")),
    ("telegram", _("Telegram chat")),
]
PUSH_DEVICE_MODELS = ("GCMDevice", "APNSDevice", "WNSDevice", "WebPushDevice")


class ContactForm(forms.Form):
    kind = forms.ChoiceField(label=_("contact"), choices=CONTACT_KINDS)


class HasContactCondition(ConditionType):
    key = "has_contact"
    label = _("Has contact")
    description = _(
        "Has an email address, a phone number, a push device (a device identity or an active "
        "django-push-notifications device of the account) or a linked Telegram chat."
    )
    form_class = ContactForm

    def to_q(self, params: dict[str, Any], *, now: datetime) -> Q:
        kind = params["kind"]
        if kind != "push":
            return _profile_exists(Identity.objects.filter(kind=IdentityKind(kind)))
        q = _profile_exists(Identity.objects.filter(kind=IdentityKind.DEVICE))
        if apps.is_installed("push_notifications"):
            for name in PUSH_DEVICE_MODELS:
                model = apps.get_model("push_notifications", name)
                q |= Q(
                    Exists(model._default_manager.filter(user_id=OuterRef("user_id"), active=True))
                )
        return q

    def describe(self, params: dict[str, Any]) -> str:
        return gettext("Has %(kind)s") % {"kind": str(dict(CONTACT_KINDS)[params["kind"]]).lower()}


class ConsentForm(ParamsForm):
    defaults = {"purpose": Purpose.MARKETING.value}
    channel = forms.ChoiceField(label=_("channel"), choices=Channel.choices)
    purpose = forms.ChoiceField(
        label=_("purpose"), choices=Purpose.choices, initial=Purpose.MARKETING, required=False
    )


class ConsentCondition(ConditionType):
    key = "consent"
    label = _("Consent granted")
    description = _("The latest consent record for the channel and purpose is a grant.")
    form_class = ConsentForm

    def to_q(self, params: dict[str, Any], *, now: datetime) -> Q:
        # A grant with no later record for the same channel and purpose: the latest record
        # wins (ties on time go to the higher id, as in consents.current_consents). Two
        # EXISTS, which PostgreSQL turns into joins (no sorted subquery per profile); a
        # profile without records has no such grant, so the negation includes it.
        same = {"channel": params["channel"], "purpose": params["purpose"]}
        later = Consent.objects.filter(profile_id=OuterRef("profile_id"), **same).filter(
            Q(created_at__gt=OuterRef("created_at"))
            | Q(created_at=OuterRef("created_at"), pk__gt=OuterRef("pk"))
        )
        return _profile_exists(Consent.objects.filter(granted=True, **same).exclude(Exists(later)))

    def describe(self, params: dict[str, Any]) -> str:
        return gettext("Consent granted for %(channel)s (%(purpose)s)") % {
            "channel": Channel(params["channel"]).label,
            "purpose": str(Purpose(params["purpose"]).label).lower(),
        }


# --- Behaviour --------------------------------------------------------------------------------
CUSTOM_EVENT = "custom"
SLUG = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")


class EventForm(ParamsForm):
    defaults = {"min_count": 1, "custom_type": ""}

    event_type = forms.ChoiceField(
        label=_("event"),
        choices=[*EventType.choices, (CUSTOM_EVENT, _("Custom event (name it below)"))],
        initial=EventType.PRODUCT_VIEWED,
    )
    custom_type = forms.CharField(
        label=_("custom event name"),
        required=False,
        max_length=64,
        help_text=_("The type of a custom event, e.g. app_opened."),
    )
    product = ProductField(
        label=_("product"), required=False, help_text=_("Only events about this product.")
    )
    category = CategoryField(
        label=_("category"),
        required=False,
        help_text=_("Only events about products in this category or below it."),
    )
    min_count = forms.IntegerField(
        label=_("at least (times)"), min_value=1, max_value=100000, initial=1, required=False
    )
    days = forms.IntegerField(
        label=_("within the last (days)"),
        required=False,
        min_value=1,
        max_value=36500,
        help_text=_("Empty: ever."),
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        custom = cleaned.get("custom_type") or ""
        if cleaned.get("event_type") == CUSTOM_EVENT:
            if not custom:
                self.add_error("custom_type", _("Name the custom event."))
            elif not SLUG.match(custom):
                self.add_error(
                    "custom_type",
                    _("Use lower-case letters, digits and _ . : - (at most 64 characters)."),
                )
        elif custom:
            self.add_error("custom_type", _('Only for the event "Custom event".'))
        if cleaned.get("product") and cleaned.get("category"):
            raise ValidationError(_("Give a product or a category, not both."))
        return cleaned


def event_type_of(params: dict[str, Any]) -> str:
    return params["custom_type"] if params["event_type"] == CUSTOM_EVENT else params["event_type"]


class EventCondition(ConditionType):
    key = "event"
    label = _("Did an event")
    category = Category.BEHAVIOUR
    description = _(
        "Viewed, added to basket or wishlist, ordered, or any custom event, optionally about a "
        "product or category, at least N times in the last D days. Negate it for "
        '"did not".'
    )
    form_class = EventForm

    def events(self, params: dict[str, Any], *, now: datetime) -> QuerySet:
        """The events that count, of every profile."""
        events = Event.objects.filter(type=event_type_of(params))
        if params.get("days"):
            events = events.filter(occurred_at__gte=now - timedelta(days=params["days"]))
        if params.get("product"):
            events = events.filter(product_id__in=product_and_variants(params["product"]))
        elif params.get("category"):
            events = events.filter(product_id__in=products_in_category(params["category"]))
        return events

    def to_q(self, params: dict[str, Any], *, now: datetime) -> Q:
        events = self.events(params, now=now)
        count = params.get("min_count") or 1
        if count == 1:
            # EXISTS: a semi-join served by the index (profile, type, occurred_at).
            return _profile_exists(events)
        # At least n: IN the profiles of one uncorrelated GROUP BY ... HAVING, which becomes
        # a semi-join computed once (a correlated EXISTS would run once per profile).
        groups = (
            events.filter(profile__isnull=False)
            .order_by()
            .values("profile_id")
            .annotate(times=Count("*"))  # not count(id): the index alone can answer
            .filter(times__gte=count)
            .values("profile_id")
        )
        return Q(pk__in=groups)

    def to_negated_q(self, params: dict[str, Any], *, now: datetime) -> Q:
        events = self.events(params, now=now)
        count = params.get("min_count") or 1
        # NOT EXISTS: an anti-join. Not "NOT IN (GROUP BY ...)": PostgreSQL never turns NOT IN
        # into an anti-join, and when the set is bigger than work_mem it rescans the list for
        # every profile. For n > 1, NOT EXISTS (... LIMIT 1 OFFSET n-1) reads at most n index
        # entries of each profile that is still a candidate.
        own = events.filter(profile=OuterRef("pk")).order_by()
        return ~Q(Exists(own[count - 1 : count]))

    def describe(self, params: dict[str, Any]) -> str:
        event_type = event_type_of(params)
        name = (
            str(EventType(event_type).label)
            if event_type in EventType.values
            else gettext("Did “%(type)s”") % {"type": event_type}
        )
        parts = [name]
        if params.get("product"):
            parts.append(
                gettext("product %(name)s")
                % {"name": _object_name(("catalogue", "Product"), params["product"])}
            )
        if params.get("category"):
            parts.append(
                gettext("in category %(name)s")
                % {"name": _object_name(("catalogue", "Category"), params["category"])}
            )
        if (params.get("min_count") or 1) > 1:
            parts.append(gettext("at least %(n)s times") % {"n": params["min_count"]})
        if params.get("days"):
            parts.append(gettext("within %(days)s days") % {"days": params["days"]})
        return " ".join(parts)


class AbandonedBasketCondition(ConditionType):
    key = "abandoned_basket"
    label = _("Abandoned a basket")
    category = Category.BEHAVIOUR
    description = _("Basket activity in the last D days and no order since.")
    form_class = DaysForm

    def to_q(self, params: dict[str, Any], *, now: datetime) -> Q:
        return Q(last_basket_activity_at__gte=now - timedelta(days=params["days"])) & (
            Q(last_order_at__isnull=True) | Q(last_order_at__lt=F("last_basket_activity_at"))
        )

    def describe(self, params: dict[str, Any]) -> str:
        return gettext("Basket activity within %(days)s days and no order since") % params


# --- Purchases --------------------------------------------------------------------------------
class BoughtForm(forms.Form):
    product = ProductField(
        label=_("product"), required=False, help_text=_("A variant counts for its parent.")
    )
    category = CategoryField(
        label=_("category"),
        required=False,
        help_text=_("Anything in this category or below it."),
    )
    days = forms.IntegerField(
        label=_("within the last (days)"),
        required=False,
        min_value=1,
        max_value=36500,
        help_text=_("Empty: ever."),
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if "product" in cleaned and "category" in cleaned:
            if cleaned["product"] and cleaned["category"]:
                raise ValidationError(_("Give a product or a category, not both."))
            if not cleaned["product"] and not cleaned["category"]:
                raise ValidationError(_("Give a product or a category."))
        return cleaned


class BoughtCondition(ConditionType):
    key = "bought"
    label = _("Bought")
    category = Category.PURCHASES
    description = _("Bought a product, or anything in a category, online or offline.")
    form_class = BoughtForm

    def to_q(self, params: dict[str, Any], *, now: datetime) -> Q:
        from .models import PurchasedProduct

        since = now - timedelta(days=params["days"]) if params.get("days") else None
        if params.get("product"):
            rows = PurchasedProduct.objects.filter(
                product_id__in=product_and_variants(params["product"])
            )
        else:
            rows = PurchasedCategory.objects.filter(
                category_id__in=category_subtree(params["category"])
            )
        if since is not None:
            rows = rows.filter(last_bought_at__gte=since)
        return _profile_exists(rows)

    def describe(self, params: dict[str, Any]) -> str:
        if params.get("product"):
            text = gettext("Bought %(name)s") % {
                "name": _object_name(("catalogue", "Product"), params["product"])
            }
        else:
            text = gettext("Bought in category %(name)s") % {
                "name": _object_name(("catalogue", "Category"), params["category"])
            }
        if params.get("days"):
            text += " " + gettext("within %(days)s days") % {"days": params["days"]}
        return text


# --- RFM --------------------------------------------------------------------------------------
def _score_field(label: StrOrPromise) -> forms.IntegerField:
    return forms.IntegerField(label=label, required=False, min_value=1, max_value=5)


class RfmScoresForm(forms.Form):
    r_min = _score_field(_("recency at least"))
    r_max = _score_field(_("recency at most"))
    f_min = _score_field(_("frequency at least"))
    f_max = _score_field(_("frequency at most"))
    m_min = _score_field(_("monetary at least"))
    m_max = _score_field(_("monetary at most"))

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.errors:
            return cleaned
        if all(value is None for value in cleaned.values()):
            raise ValidationError(_("Give at least one score bound."))
        for letter in "rfm":
            low, high = cleaned.get(f"{letter}_min"), cleaned.get(f"{letter}_max")
            if low is not None and high is not None and low > high:
                self.add_error(f"{letter}_min", _("Must not be greater than the upper bound."))
        return cleaned


RFM_FIELDS = {"r": "recency", "f": "frequency", "m": "monetary"}


class RfmScoresCondition(ConditionType):
    key = "rfm_scores"
    label = _("RFM scores")
    category = Category.RFM
    description = _(
        "Recency, frequency and monetary quintiles from 1 (lowest) to 5 (highest), among "
        "customers with at least one order; refreshed periodically."
    )
    form_class = RfmScoresForm

    def to_q(self, params: dict[str, Any], *, now: datetime) -> Q:
        from .models import RfmScore

        rows = RfmScore.objects.all()
        for letter, field in RFM_FIELDS.items():
            if params.get(f"{letter}_min") is not None:
                rows = rows.filter(**{f"{field}__gte": params[f"{letter}_min"]})
            if params.get(f"{letter}_max") is not None:
                rows = rows.filter(**{f"{field}__lte": params[f"{letter}_max"]})
        return _profile_exists(rows)

    def describe(self, params: dict[str, Any]) -> str:
        parts = []
        for letter in "rfm":
            low, high = params.get(f"{letter}_min"), params.get(f"{letter}_max")
            if low is None and high is None:
                continue
            low, high = low or 1, high or 5
            name = letter.upper()
            parts.append(f"{name} {low}" if low == high else f"{name} {low}-{high}")
        return gettext("RFM %(scores)s") % {"scores": ", ".join(parts)}


class RfmGroupForm(forms.Form):
    groups = forms.MultipleChoiceField(label=_("groups"), choices=[])

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from .models import RfmGroup

        super().__init__(*args, **kwargs)
        self.fields["groups"].choices = RfmGroup.choices


class RfmGroupCondition(ConditionType):
    key = "rfm_group"
    label = _("RFM group")
    category = Category.RFM
    description = _(
        "Champions, Loyal, At risk, ...: named cells of the recency x frequency grid "
        "(see the docs for the mapping)."
    )
    form_class = RfmGroupForm

    def to_q(self, params: dict[str, Any], *, now: datetime) -> Q:
        from .models import RfmScore

        return _profile_exists(RfmScore.objects.filter(group__in=params["groups"]))

    def describe(self, params: dict[str, Any]) -> str:
        from .models import RfmGroup

        names = ", ".join(str(RfmGroup(group).label) for group in params["groups"])
        return gettext("RFM group: %(names)s") % {"names": names}


# --- Channel engagement -----------------------------------------------------------------------
class ChannelChoiceField(forms.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("label", _("channel"))
        super().__init__(choices=channel_choices, **kwargs)


ENGAGEMENT_ACTIONS = [
    ("opened_or_clicked", _("opened or clicked")),
    ("clicked", _("clicked")),
]


class EngagedForm(ParamsForm):
    defaults = {"action": "opened_or_clicked"}

    channel = ChannelChoiceField()
    action = forms.ChoiceField(
        label=_("action"), choices=ENGAGEMENT_ACTIONS, initial="opened_or_clicked", required=False
    )
    days = forms.IntegerField(
        label=_("within the last (days)"), min_value=1, max_value=36500, initial=90
    )


class EngagedCondition(ConditionType):
    key = "engaged"
    label = _("Engaged on a channel")
    category = Category.ENGAGEMENT
    description = _(
        "Opened or clicked one of our messages on a channel in the last D days. Negate it for "
        '"no opens or clicks".'
    )
    form_class = EngagedForm

    def to_q(self, params: dict[str, Any], *, now: datetime) -> Q:
        from ..channels.models import Message

        since = now - timedelta(days=params["days"])
        when = Q(clicked_at__gte=since)
        if params["action"] == "opened_or_clicked":
            when |= Q(opened_at__gte=since)
        return _profile_exists(Message.objects.filter(when, channel=params["channel"]))

    def describe(self, params: dict[str, Any]) -> str:
        return gettext("%(action)s on %(channel)s within %(days)s days") % {
            "action": str(dict(ENGAGEMENT_ACTIONS)[params["action"]]).capitalize(),
            "channel": params["channel"],
            "days": params["days"],
        }


class ChannelForm(forms.Form):
    channel = ChannelChoiceField()


class PreferredChannelCondition(ConditionType):
    key = "preferred_channel"
    label = _("Preferred channel")
    category = Category.ENGAGEMENT
    description = _(
        "The channel whose messages the person engages with most (smoothed rate over the "
        "engagement window); refreshed periodically."
    )
    form_class = ChannelForm

    def to_q(self, params: dict[str, Any], *, now: datetime) -> Q:
        from .models import EngagementScore

        return _profile_exists(EngagementScore.objects.filter(preferred_channel=params["channel"]))

    def describe(self, params: dict[str, Any]) -> str:
        return gettext("Preferred channel is %(channel)s") % params


class HoursForm(forms.Form):
    from_hour = forms.IntegerField(label=_("from hour"), min_value=0, max_value=23, initial=8)
    to_hour = forms.IntegerField(
        label=_("to hour"),
        min_value=0,
        max_value=23,
        initial=12,
        help_text=_("Inclusive; smaller than the first hour wraps past midnight."),
    )


class BestSendHourCondition(ConditionType):
    key = "best_send_hour"
    label = _("Best send hour")
    category = Category.ENGAGEMENT
    description = _(
        "The hour of the day (shop time zone) when the person most often opens or clicks; "
        "refreshed periodically."
    )
    form_class = HoursForm

    def to_q(self, params: dict[str, Any], *, now: datetime) -> Q:
        from .models import EngagementScore

        low, high = params["from_hour"], params["to_hour"]
        if low <= high:
            hours = Q(best_hour__gte=low, best_hour__lte=high)
        else:  # 22 to 2: 22, 23, 0, 1, 2
            hours = Q(best_hour__gte=low) | Q(best_hour__lte=high)
        return _profile_exists(EngagementScore.objects.filter(hours))

    def describe(self, params: dict[str, Any]) -> str:
        return gettext("Best send hour between %(from_hour)s:00 and %(to_hour)s:59") % params


# --- Segments ---------------------------------------------------------------------------------
class SegmentForm(forms.Form):
    segment = SegmentField(label=_("segment"))


class InSegmentCondition(ConditionType):
    key = "in_segment"
    label = _("In segment")
    category = Category.SEGMENTS
    description = _("Matches the rules of another segment (evaluated live, not a snapshot).")
    form_class = SegmentForm

    def to_q(self, params: dict[str, Any], *, now: datetime) -> Q:
        from .rules import compile_segment_reference

        return compile_segment_reference(params["segment"], now=now)

    def to_negated_q(self, params: dict[str, Any], *, now: datetime) -> Q:
        from .rules import compile_segment_reference

        return compile_segment_reference(params["segment"], now=now, negated=True)

    def describe(self, params: dict[str, Any]) -> str:
        from .models import Segment

        segment = Segment.objects.filter(pk=params["segment"]).first()
        name = f"“{segment}”" if segment else f"#{params['segment']}"
        return gettext("In segment %(name)s") % {"name": name}


BUILT_IN: list[type[ConditionType]] = [
    OrdersCountCondition,
    TotalSpentCondition,
    AverageOrderValueCondition,
    DaysSinceFirstOrderCondition,
    DaysSinceLastOrderCondition,
    DaysSinceRegistrationCondition,
    LastSeenCondition,
    SourcesUsedCondition,
    DevicesCountCondition,
    HasContactCondition,
    ConsentCondition,
    EventCondition,
    AbandonedBasketCondition,
    BoughtCondition,
    RfmScoresCondition,
    RfmGroupCondition,
    EngagedCondition,
    PreferredChannelCondition,
    BestSendHourCondition,
    InSegmentCondition,
]

for _condition in BUILT_IN:
    registry.register(_condition)
