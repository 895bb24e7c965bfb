"""Validation of everything the API accepts. Every error names its field (DRF's JSON 400).

Unknown fields are refused rather than ignored, so a typo (``"phnoe"``) is an error instead of
a silently lost identity.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from django.core.validators import RegexValidator
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from ..conf import app_settings
from ..exceptions import InvalidIdentity
from ..profiles.models import Channel, EventType, IdentityKind, Purpose
from ..profiles.normalise import normalise_identity
from .products import ProductLookup

INT32_MAX = 2**31 - 1
#: Payloads nest at most this deep (a guard against pathological JSON, not a business rule).
PAYLOAD_MAX_DEPTH = 16
#: Events no client may send through ``events``: orders go through ``offline-orders`` (or are
#: recorded by the shop's checkout), so every order_placed has the lines aggregates rely on.
RESERVED_EVENT_TYPES = {EventType.ORDER_PLACED.value}
#: What PostgreSQL refuses in text and jsonb: NUL, and lone surrogates (not encodable in UTF-8).
UNSTORABLE_CHARACTERS = re.compile("[\x00\ud800-\udfff]")
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.get_fixed_timezone(0))

currency_validator = RegexValidator(
    r"^[A-Z]{3}\Z", _("A currency is three capital letters (ISO 4217), e.g. 'GBP'.")
)


class StrictSerializer(serializers.Serializer):
    """A serializer that refuses fields it does not know, alongside its other errors."""

    def to_internal_value(self, data: Any) -> Any:
        errors: dict[str, Any] = {}
        value = None
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if not isinstance(exc.detail, Mapping):
                raise
            errors.update(exc.detail)
        if isinstance(data, Mapping):
            for name in data:
                if name not in self.fields or self.fields[name].read_only:
                    errors[str(name)] = [_("Unknown field.")]
        if errors:
            raise serializers.ValidationError(errors)
        return value


class PayloadField(serializers.JSONField):
    """A JSON object of the client's own, stored as is: bounded in size and depth, and holding
    nothing a database refuses (NUL characters, lone surrogates, infinite numbers)."""

    default_error_messages = {
        "not_object": _("Expected a JSON object."),
        "too_big": _("At most {max} bytes of JSON; this is {size}."),
        "too_deep": _("Nested deeper than {max} levels."),
        "bad_string": _("Contains a NUL character or an unpaired surrogate."),
        "bad_number": _("Contains a number that is not finite."),
    }

    def to_internal_value(self, data: Any) -> Any:
        # Not JSONField's own check (a json.dumps of its own): the size check below dumps it.
        if not isinstance(data, dict):
            self.fail("not_object")
        self._check(data, depth=0)
        try:
            size = len(json.dumps(data, ensure_ascii=False, allow_nan=False).encode("utf-8"))
        except (ValueError, TypeError):
            self.fail("bad_number")
        limit = app_settings.API_PAYLOAD_MAX_BYTES
        if size > limit:
            self.fail("too_big", max=limit, size=size)
        return data

    def _check(self, value: Any, *, depth: int) -> None:
        if depth > PAYLOAD_MAX_DEPTH:
            self.fail("too_deep", max=PAYLOAD_MAX_DEPTH)
        if isinstance(value, str):
            if UNSTORABLE_CHARACTERS.search(value):
                self.fail("bad_string")
        elif isinstance(value, float):
            if not math.isfinite(value):
                self.fail("bad_number")
        elif isinstance(value, dict):
            for key, item in value.items():
                self._check(key, depth=depth + 1)
                self._check(item, depth=depth + 1)
        elif isinstance(value, list):
            for item in value:
                self._check(item, depth=depth + 1)


class OccurredAtField(serializers.DateTimeField):
    """When it happened: ISO 8601, not before 2000, not further ahead than the clock skew the
    ``API_MAX_FUTURE_SKEW`` setting allows. Times without an offset are read in the shop's
    TIME_ZONE."""

    def to_internal_value(self, value: Any) -> datetime:
        result = super().to_internal_value(value)
        latest = timezone.now() + timedelta(seconds=app_settings.API_MAX_FUTURE_SKEW)
        if result < EARLIEST:
            raise serializers.ValidationError(_("Too far in the past (before 2000)."))
        if result > latest:
            raise serializers.ValidationError(
                _("In the future (later than the server's clock allows): check the clock.")
            )
        return result


def _identity_field(help_text: str) -> serializers.CharField:
    return serializers.CharField(required=False, max_length=255, help_text=help_text)


class IdentitiesSerializer(StrictSerializer):
    """Known identities of the person, normalised (emails lower-cased, phones E.164)."""

    email = _identity_field("Email address.")
    phone = _identity_field(
        "Phone number: E.164 (+447700900123), or national in the shop's default region.",
    )
    loyalty_card = _identity_field("Loyalty card number.")
    device = _identity_field("Push token (registration id) of the device, as registered.")

    def validate_email(self, value: str) -> str:
        return _normalised(IdentityKind.EMAIL, value)

    def validate_phone(self, value: str) -> str:
        return _normalised(IdentityKind.PHONE, value)

    def validate_loyalty_card(self, value: str) -> str:
        return _normalised(IdentityKind.LOYALTY_CARD, value)

    def validate_device(self, value: str) -> str:
        return _normalised(IdentityKind.DEVICE, value)


def _normalised(kind: str, value: str) -> str:
    try:
        return normalise_identity(kind, value)
    except InvalidIdentity as exc:
        raise serializers.ValidationError(str(exc)) from exc


class PersonSerializer(StrictSerializer):
    """Who did it: an anonymous id of the app install, a user account, known identities."""

    anonymous_id = serializers.CharField(
        required=False,
        max_length=64,
        help_text="Anonymous id of the app install or web visitor (stable per install).",
    )
    user_id = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=INT32_MAX,
        help_text="Id of the shop's user account, when the person is signed in.",
    )
    identities = IdentitiesSerializer(required=False)

    #: How many of anonymous_id, user_id and the identities at least must be given.
    min_identities = 1
    min_identities_message = _("Name the person: give anonymous_id, user_id or identities.")

    def validate_anonymous_id(self, value: str) -> str:
        return _normalised(IdentityKind.VISITOR, value)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        named = int(bool(attrs.get("anonymous_id"))) + int(attrs.get("user_id") is not None)
        named += len(attrs.get("identities") or {})
        if named < self.min_identities:
            raise serializers.ValidationError({"identities": [self.min_identities_message]})
        return attrs


class EventSerializer(PersonSerializer):
    """One event of a batch."""

    client_id = serializers.CharField(
        max_length=64,
        help_text="The client's unique id of this event (e.g. a UUID): a retry is stored once.",
    )
    type = serializers.SlugField(
        max_length=64,
        help_text="What happened: a built-in type (product_viewed, basket_line_added, "
        "wishlist_line_added, ...) or your own slug (app_opened).",
    )
    occurred_at = OccurredAtField(required=False, help_text="When; default: now.")
    product_id = serializers.IntegerField(
        required=False, min_value=1, max_value=INT32_MAX, help_text="The product's id."
    )
    sku = serializers.CharField(
        required=False,
        max_length=128,
        help_text="The product by partner SKU (stock record) or UPC, instead of product_id.",
    )
    amount = serializers.DecimalField(
        required=False, max_digits=14, decimal_places=2, help_text="Money the event is about."
    )
    currency = serializers.CharField(
        required=False, min_length=3, max_length=3, validators=[currency_validator]
    )
    payload = PayloadField(required=False, help_text="Anything else, as a JSON object.")

    def to_internal_value(self, data: Any) -> Any:
        # Most events of a batch are plain (strings, a small payload): checking those by hand
        # costs a fifth of DRF's field-by-field machinery, which is 40 % of a batch's
        # server time. Anything the fast path is not sure about goes through DRF, which
        # also writes the error messages; tests check that both give the same result.
        fast = self._plain_event(data)
        return fast if fast is not None else super().to_internal_value(data)

    def _plain_event(self, data: Any) -> dict[str, Any] | None:
        """The validated event when ``data`` is plainly valid, else None (ask DRF)."""
        if type(data) is not dict or not data.keys() <= _PLAIN_EVENT_KEYS:
            return None
        out: dict[str, Any] = {}
        for name, limit in (("client_id", 64), ("type", 64), ("anonymous_id", 64), ("sku", 128)):
            if name in data:
                value = _plain_text(data[name], limit)
                if value is None:
                    return None
                out[name] = value
        if "client_id" not in out or "type" not in out:
            return None
        if not _SLUG.match(out["type"]) or out["type"] in RESERVED_EVENT_TYPES:
            return None
        if "anonymous_id" in out:
            out["anonymous_id"] = out["anonymous_id"].strip()  # normalise_token, as DRF's path
        if "product_id" in data:
            product_id = data["product_id"]
            if type(product_id) is not int or not 1 <= product_id <= INT32_MAX:
                return None
            out["product_id"] = product_id
        if "identities" in data:
            identities = data["identities"]
            if type(identities) is not dict or not identities.keys() <= _IDENTITY_KEYS:
                return None
            out["identities"] = {}
            for kind in _IDENTITY_KEYS_IN_ORDER:
                if kind in identities:
                    value = _plain_text(identities[kind], 255)
                    if value is None:
                        return None
                    try:
                        out["identities"][kind] = normalise_identity(kind, value)
                    except InvalidIdentity:
                        return None
        for name in ("occurred_at", "payload"):
            if name in data:
                try:
                    out[name] = self.fields[name].run_validation(data[name])
                except serializers.ValidationError:
                    return None
        return out

    def validate_type(self, value: str) -> str:
        if value in RESERVED_EVENT_TYPES:
            raise serializers.ValidationError(
                _("'%s' events are recorded by the shop or by offline-orders.") % value
            )
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        if "product_id" in attrs and "sku" in attrs:
            raise serializers.ValidationError({"sku": [_("Give product_id or sku, not both.")]})
        if "amount" in attrs and "currency" not in attrs:
            raise serializers.ValidationError({"currency": [_("Required with an amount.")]})
        return attrs


_PLAIN_EVENT_KEYS = {
    "client_id",
    "type",
    "anonymous_id",
    "identities",
    "occurred_at",
    "product_id",
    "sku",
    "payload",
}
_IDENTITY_KEYS_IN_ORDER = ("email", "phone", "loyalty_card", "device")  # IdentitiesSerializer's
_IDENTITY_KEYS = set(_IDENTITY_KEYS_IN_ORDER)
_SLUG = re.compile(r"^[-a-zA-Z0-9_]+\Z")  # SlugField's


def _plain_text(value: Any, max_length: int) -> str | None:
    """What DRF's CharField makes of a plain string (stripped; not blank, not too long, nothing
    PostgreSQL refuses), or None to let DRF decide and explain."""
    if type(value) is not str:
        return None
    value = value.strip()
    if not value or len(value) > max_length or UNSTORABLE_CHARACTERS.search(value):
        return None
    return value


class BoundedListField(serializers.ListField):
    """A list whose length is checked against a setting before any item is validated (so a
    huge request is refused cheaply), with the items' errors under their index."""

    def __init__(self, *, limit_setting: str, noun: str, **kwargs: Any) -> None:
        self.limit_setting = limit_setting
        self.noun = noun
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> list[dict[str, Any]]:
        items, errors = self.validate_items(data)
        if errors:
            raise serializers.ValidationError(dict(sorted(errors.items())))
        return [items[index] for index in sorted(items)]

    def validate_items(self, data: Any) -> tuple[dict[int, Any], dict[int, Any]]:
        if not isinstance(data, list):
            raise serializers.ValidationError(_("Expected a list of %s.") % self.noun)
        limit = getattr(app_settings, self.limit_setting)
        if len(data) > limit:
            raise serializers.ValidationError(
                _(
                    "Too many %(noun)s in one request: %(count)d; send at most %(limit)d. "
                    "Nothing of this request was stored."
                )
                % {"noun": self.noun, "count": len(data), "limit": limit}
            )
        if not data:
            raise serializers.ValidationError(_("Send at least one of the %s.") % self.noun)
        errors: dict[int, Any] = {}
        items: dict[int, Any] = {}
        for index, item in enumerate(data):
            try:
                items[index] = self.child.run_validation(item)
            except serializers.ValidationError as exc:
                errors[index] = exc.detail
        return items, errors


class EventListField(BoundedListField):
    """The batch: refused as a whole above API_MAX_BATCH events (before validating any), and
    validated as a whole: per-event errors come back under the event's index."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(limit_setting="API_MAX_BATCH", noun="events", **kwargs)

    def to_internal_value(self, data: Any) -> list[dict[str, Any]]:
        events, errors = self.validate_items(data)
        first_at: dict[str, int] = {}
        for index, event in events.items():
            first = first_at.setdefault(event["client_id"], index)
            if first != index:
                errors[index] = {"client_id": [_("Repeated in this batch (index %d).") % first]}
        self._resolve_references(events, errors)
        if errors:
            raise serializers.ValidationError(dict(sorted(errors.items())))
        return [events[index] for index in sorted(events)]

    @staticmethod
    def _resolve_references(events: dict[int, dict[str, Any]], errors: dict[int, Any]) -> None:
        """Products by id or SKU and user ids: checked in a few queries for the whole batch."""
        from django.contrib.auth import get_user_model

        lookup = ProductLookup.ids_for_references(
            ids={e["product_id"] for e in events.values() if "product_id" in e},
            skus={e["sku"] for e in events.values() if "sku" in e},
        )
        user_ids = {e["user_id"] for e in events.values() if "user_id" in e}
        users = (
            set(
                get_user_model()
                ._default_manager.filter(pk__in=user_ids)
                .values_list("pk", flat=True)
            )
            if user_ids
            else set()
        )
        for index, event in events.items():
            if index in errors:
                continue
            if "user_id" in event and event["user_id"] not in users:
                errors[index] = {"user_id": [_("No user with id %d.") % event["user_id"]]}
                continue
            field, problem, product = lookup.resolve(
                product_id=event.get("product_id"), sku=event.get("sku")
            )
            if problem:
                errors[index] = {field: [problem]}
            elif product is not None:
                event["product_id"] = product.pk


class EventBatchSerializer(StrictSerializer):
    events = EventListField(
        child=EventSerializer(),
        help_text="At most API_MAX_BATCH events (500 by default). All are stored or none.",
    )


class EventResultSerializer(serializers.Serializer):
    client_id = serializers.CharField()
    id = serializers.IntegerField(allow_null=True, help_text="The stored event's id.")
    duplicate = serializers.BooleanField(help_text="Already stored by an earlier request.")


class EventBatchResultSerializer(serializers.Serializer):
    stored = serializers.IntegerField(help_text="Events stored by this request.")
    duplicates = serializers.IntegerField(help_text="Events an earlier request had stored.")
    events = EventResultSerializer(many=True)


class IdentifySerializer(PersonSerializer):
    """Links what the client knows about one person: at least two identities."""

    occurred_at = OccurredAtField(required=False, help_text="When; default: now.")
    payload = PayloadField(required=False)

    min_identities = 2
    min_identities_message = _(
        "Nothing to link: give at least two of anonymous_id, user_id and identities."
    )

    def validate_user_id(self, value: int) -> int:
        return _existing_user(value)


def _existing_user(user_id: int) -> int:
    from django.contrib.auth import get_user_model

    if not get_user_model()._default_manager.filter(pk=user_id).exists():
        raise serializers.ValidationError(_("No user with id %d.") % user_id)
    return user_id


class IdentifyResultSerializer(serializers.Serializer):
    event_id = serializers.IntegerField(help_text="The identify event, folded in the background.")
    profile = serializers.UUIDField(
        allow_null=True,
        help_text="Public id of the profile that holds the strongest identity given, if any "
        "holds one yet. The merge itself happens when the event is folded.",
    )
    status = serializers.CharField(help_text="'pending' until the fold task has run.")


class DeviceType:
    FCM = "fcm"
    APNS = "apns"
    WEBPUSH = "webpush"
    CHOICES = [(FCM, "Firebase Cloud Messaging"), (APNS, "Apple APNs"), (WEBPUSH, "Web Push")]


class DeviceSerializer(StrictSerializer):
    """A push device on django-push-notifications' models; validated again by its serializers."""

    type = serializers.ChoiceField(choices=DeviceType.CHOICES)
    registration_id = serializers.CharField(
        max_length=4096,
        help_text="FCM token, APNs device token (hex) or the Web Push subscription endpoint.",
    )
    name = serializers.CharField(required=False, max_length=255)
    application_id = serializers.CharField(
        required=False,
        max_length=64,
        help_text="django-push-notifications application id (several apps/credentials).",
    )
    device_id = serializers.CharField(
        required=False,
        max_length=64,
        help_text="FCM: ANDROID_ID in hex (0x...); APNs: identifierForVendor (UUID).",
    )
    p256dh = serializers.CharField(required=False, max_length=88, help_text="Web Push only.")
    auth = serializers.CharField(required=False, max_length=24, help_text="Web Push only.")
    browser = serializers.ChoiceField(
        required=False,
        choices=["CHROME", "FIREFOX", "OPERA", "EDGE", "SAFARI"],
        help_text="Web Push only.",
    )
    active = serializers.BooleanField(default=True, help_text="false: stop sending to it.")
    user_id = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=INT32_MAX,
        help_text="The signed-in user the device belongs to.",
    )
    anonymous_id = serializers.CharField(
        required=False, max_length=64, help_text="Anonymous id of the app install."
    )

    def validate_user_id(self, value: int) -> int:
        return _existing_user(value)

    def validate_anonymous_id(self, value: str) -> str:
        return _normalised(IdentityKind.VISITOR, value)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        kind = attrs["type"]
        misplaced = {
            DeviceType.FCM: ("p256dh", "auth", "browser"),
            DeviceType.APNS: ("p256dh", "auth", "browser"),
            DeviceType.WEBPUSH: ("device_id",),
        }[kind]
        errors = {
            name: [_("Not used for %s devices.") % kind] for name in misplaced if name in attrs
        }
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


class DeviceResultSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    type = serializers.CharField()
    registration_id = serializers.CharField()
    active = serializers.BooleanField()
    created = serializers.BooleanField(help_text="false: an existing device was updated.")
    event_id = serializers.IntegerField(
        allow_null=True,
        help_text="The event that records the device as an identity of the person (null when "
        "there is nothing to record, e.g. a deactivation).",
    )


class DeviceDeactivateSerializer(StrictSerializer):
    type = serializers.ChoiceField(choices=DeviceType.CHOICES)
    registration_id = serializers.CharField(max_length=4096)


class DeviceDeactivateResultSerializer(serializers.Serializer):
    deactivated = serializers.IntegerField()


class ConsentChangeSerializer(StrictSerializer):
    channel = serializers.ChoiceField(choices=Channel.choices)
    purpose = serializers.ChoiceField(choices=Purpose.choices)
    granted = serializers.BooleanField(help_text="true: granted; false: withdrawn.")


class ConsentsSerializer(PersonSerializer):
    """Grants and withdrawals of one person, recorded with the key's source."""

    consents = serializers.ListField(
        child=ConsentChangeSerializer(), min_length=1, max_length=len(Channel) * len(Purpose)
    )
    occurred_at = OccurredAtField(required=False, help_text="When the person decided.")
    note = serializers.CharField(
        required=False, max_length=255, help_text="Kept with the record, e.g. the form's name."
    )

    def validate_user_id(self, value: int) -> int:
        return _existing_user(value)


class ConsentStateSerializer(serializers.Serializer):
    channel = serializers.CharField()
    purpose = serializers.CharField()
    granted = serializers.BooleanField()
    source = serializers.CharField()
    created_at = serializers.DateTimeField()


class ConsentsResultSerializer(serializers.Serializer):
    profile = serializers.UUIDField()
    profile_created = serializers.BooleanField(
        help_text="true: nobody held these identities yet, a profile was made for them."
    )
    consents = ConsentStateSerializer(many=True, help_text="The profile's current consents.")


class StoreSerializer(StrictSerializer):
    id = serializers.CharField(max_length=64, help_text="The store's code.")
    name = serializers.CharField(required=False, max_length=255, allow_blank=True)


class CustomerSerializer(StrictSerializer):
    """Whatever the customer gave at the till (at least one of phone, loyalty card, email)."""

    phone = serializers.CharField(required=False, max_length=255)
    loyalty_card = serializers.CharField(required=False, max_length=255)
    email = serializers.CharField(required=False, max_length=255)
    first_name = serializers.CharField(required=False, max_length=150, allow_blank=True)
    last_name = serializers.CharField(required=False, max_length=150, allow_blank=True)

    def validate_phone(self, value: str) -> str:
        return _normalised(IdentityKind.PHONE, value)

    def validate_loyalty_card(self, value: str) -> str:
        return _normalised(IdentityKind.LOYALTY_CARD, value)

    def validate_email(self, value: str) -> str:
        return _normalised(IdentityKind.EMAIL, value)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        if not any(attrs.get(name) for name in ("phone", "loyalty_card", "email")):
            raise serializers.ValidationError(
                {
                    "phone": [
                        _(
                            "Give a phone, loyalty_card or email: a purchase nobody can be "
                            "recognised by is not recorded."
                        )
                    ]
                }
            )
        return attrs


class OrderLineSerializer(StrictSerializer):
    sku = serializers.CharField(
        required=False, max_length=128, help_text="Partner SKU (stock record) or UPC."
    )
    upc = serializers.CharField(required=False, max_length=64, help_text="UPC / barcode.")
    product_id = serializers.IntegerField(required=False, min_value=1, max_value=INT32_MAX)
    title = serializers.CharField(
        required=False, max_length=255, help_text="Default: the product's title."
    )
    quantity = serializers.IntegerField(min_value=1, max_value=1_000_000)
    unit_price = serializers.DecimalField(
        max_digits=12, decimal_places=2, min_value=0, help_text="Price of one unit, tax included."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        given = [name for name in ("sku", "upc", "product_id") if name in attrs]
        if len(given) != 1:
            raise serializers.ValidationError(
                {"sku": [_("Give exactly one of sku, upc and product_id.")]}
            )
        return attrs


class OfflineOrderSerializer(StrictSerializer):
    number = serializers.CharField(
        max_length=64, help_text="The till's order number: a retry is stored once (per key)."
    )
    store = StoreSerializer()
    occurred_at = OccurredAtField(help_text="When the purchase was made.")
    currency = serializers.CharField(
        min_length=3, max_length=3, validators=[currency_validator], help_text="ISO 4217."
    )
    total = serializers.DecimalField(
        max_digits=14, decimal_places=2, min_value=0, help_text="Total paid, tax included."
    )
    customer = CustomerSerializer()
    lines = BoundedListField(
        child=OrderLineSerializer(),
        limit_setting="API_MAX_ORDER_LINES",
        noun="lines",
        help_text="At most API_MAX_ORDER_LINES lines (500 by default).",
    )
    allow_unknown_products = serializers.BooleanField(
        default=False,
        help_text="false (default): a line whose product is unknown refuses the order. true: "
        "such lines are kept without a product and reported back.",
    )


class UnknownLineSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    field = serializers.CharField()
    error = serializers.CharField()


class OfflineOrderResultSerializer(serializers.Serializer):
    number = serializers.CharField()
    event_id = serializers.IntegerField(allow_null=True)
    duplicate = serializers.BooleanField(help_text="Already stored by an earlier request.")
    unknown_lines = UnknownLineSerializer(
        many=True, help_text="Lines kept without a product (allow_unknown_products)."
    )


class DetailSerializer(serializers.Serializer):
    detail = serializers.CharField()
