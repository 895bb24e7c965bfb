"""What the API writes. Views and the POS import command validate, then call these.

Everything here only INSERTs events (and receipts): identity resolution and merges happen in
the fold task, as for the web shop's events. The one exception is ``record_consents``, which
needs a profile to hang the consent on (see its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils.translation import gettext as _

from ..profiles.consents import current_consents, record_consent
from ..profiles.identity import FOLD_LOCK_ID
from ..profiles.models import (
    IDENTITY_STRENGTH,
    Consent,
    CustomerProfile,
    Event,
    EventSource,
    EventType,
    Identity,
    IdentityKind,
)
from ..profiles.normalise import MAX_VALUE_LENGTH
from .models import ApiEventReceipt, ApiKey, ReceiptKind
from .products import ProductLookup

#: Event types the API itself records (custom types: the built-in list is the shop's).
IDENTIFIED = "identified"
PUSH_DEVICE_REGISTERED = "push_device_registered"
CONSENTS_CHANGED = "consents_changed"

_STRENGTH = {str(kind): rank for rank, kind in enumerate(IDENTITY_STRENGTH)}
CENT = Decimal("0.01")


def _event(
    key: ApiKey,
    data: dict[str, Any],
    *,
    type: str,
    now: datetime,
    payload: dict[str, Any] | None = None,
    **extra: Any,
) -> Event:
    """An unsaved event of ``key``'s source naming the person described by ``data``."""
    return Event(
        type=type,
        source=key.source,
        user_id=data.get("user_id"),
        visitor_key=data.get("anonymous_id", ""),
        identities=dict(data.get("identities") or {}),
        payload=data.get("payload") or {} if payload is None else payload,
        occurred_at=data.get("occurred_at") or now,
        recorded_at=now,
        **extra,
    )


def _identity_keys(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, normalised value) of the person described by validated ``data``, strongest
    first, as the fold task will see them."""
    keys = []
    if data.get("user_id") is not None:
        keys.append((str(IdentityKind.USER), str(data["user_id"])))
    if data.get("anonymous_id"):
        keys.append((str(IdentityKind.VISITOR), data["anonymous_id"]))
    keys += [(kind, value) for kind, value in (data.get("identities") or {}).items() if value]
    return sorted(dict.fromkeys(keys), key=lambda key: _STRENGTH[key[0]])


# --- events -------------------------------------------------------------------------------------


@dataclass
class EventResult:
    client_id: str
    id: int | None
    duplicate: bool


def store_events(key: ApiKey, events: list[dict[str, Any]], *, now: datetime) -> list[EventResult]:
    """Store a validated batch, once: events whose client id this key already sent are
    skipped. The events and their receipts are committed together before this returns."""
    results: dict[str, EventResult] = {}

    def attempt() -> None:
        results.clear()
        client_ids = [event["client_id"] for event in events]
        with transaction.atomic():
            for client_id, event_id in ApiEventReceipt.objects.filter(
                key=key, kind=ReceiptKind.EVENT, client_id__in=client_ids
            ).values_list("client_id", "event_id"):
                results[client_id] = EventResult(client_id, event_id, duplicate=True)
            new = [data for data in events if data["client_id"] not in results]
            rows = Event.objects.bulk_create(
                [
                    _event(
                        key,
                        data,
                        type=data["type"],
                        now=now,
                        product_id=data.get("product_id"),
                        amount=data.get("amount"),
                        currency=data.get("currency", ""),
                    )
                    for data in new
                ]
            )
            ApiEventReceipt.objects.bulk_create(
                [
                    ApiEventReceipt(
                        key=key,
                        kind=ReceiptKind.EVENT,
                        client_id=data["client_id"],
                        event=row,
                        created_at=now,
                    )
                    for data, row in zip(new, rows, strict=True)
                ]
            )
            for data, row in zip(new, rows, strict=True):
                results[data["client_id"]] = EventResult(data["client_id"], row.pk, False)

    _retry_once_on_conflict(attempt)
    return [results[event["client_id"]] for event in events]


def _retry_once_on_conflict(attempt: Any) -> None:
    """Run ``attempt``; if a concurrent request inserted the same receipt or identity first
    (unique constraint), its transaction rolled back: run it again, now seeing that row."""
    try:
        attempt()
    except IntegrityError:
        attempt()


# --- identify -----------------------------------------------------------------------------------


def find_profile(keys: list[tuple[str, str]]) -> CustomerProfile | None:
    """The profile holding the strongest of these identities, as the fold would pick it.

    An anonymous id only counts when nothing stronger is named: like a shared computer's
    cookie, it never pulls a named person into whoever used that install first.
    """
    named = [key for key in keys if key[0] != IdentityKind.VISITOR] or keys
    if not named:
        return None
    owners: dict[tuple[str, str], int] = {}
    by_kind: dict[str, list[str]] = {}
    for kind, value in named:
        by_kind.setdefault(kind, []).append(value)
    for kind, values in by_kind.items():
        for value, profile_id in Identity.objects.filter(kind=kind, value__in=values).values_list(
            "value", "profile_id"
        ):
            owners[(kind, value)] = profile_id
    user_ids = [int(value) for kind, value in named if kind == IdentityKind.USER]
    for user_id, profile_id in CustomerProfile.objects.filter(user_id__in=user_ids).values_list(
        "user_id", "pk"
    ):
        owners.setdefault((str(IdentityKind.USER), str(user_id)), profile_id)
    for key in named:  # strongest first
        if key in owners:
            return CustomerProfile.objects.get(pk=owners[key])
    return None


@dataclass
class IdentifyResult:
    event: Event
    profile: CustomerProfile | None


def record_identify(key: ApiKey, data: dict[str, Any], *, now: datetime) -> IdentifyResult:
    """One event naming all the identities given; the fold task links or merges them.

    Not folded here: the fold works through the whole queue in order and takes a lock, which
    does not belong in a request. The merge shows within EVENT_FOLD_INTERVAL seconds.
    """
    event = _event(key, data, type=IDENTIFIED, now=now)
    event.save(force_insert=True)
    return IdentifyResult(event=event, profile=find_profile(_identity_keys(data)))


# --- push devices -------------------------------------------------------------------------------


@dataclass
class DeviceResult:
    device: Any
    type: str
    created: bool
    event: Event | None


def device_models() -> dict[str, tuple[Any, Any, dict[str, Any]]]:
    """type -> (model, push-notifications serializer, extra attributes on save)."""
    from push_notifications.api.rest_framework import (
        APNSDeviceSerializer,
        GCMDeviceSerializer,
        WebPushDeviceSerializer,
    )
    from push_notifications.models import APNSDevice, GCMDevice, WebPushDevice

    return {
        "fcm": (GCMDevice, GCMDeviceSerializer, {"cloud_message_type": "FCM"}),
        "apns": (APNSDevice, APNSDeviceSerializer, {}),
        "webpush": (WebPushDevice, WebPushDeviceSerializer, {}),
    }


class DeviceInvalid(Exception):
    """push-notifications' own serializer refused the device; ``errors`` name the fields."""

    def __init__(self, errors: dict[str, Any]) -> None:
        super().__init__(errors)
        self.errors = errors


def register_device(key: ApiKey, data: dict[str, Any], *, now: datetime) -> DeviceResult:
    """Create or update (by registration id) a device on push-notifications' models, and
    record the token as a ``device`` identity of the person, so the push channel finds the
    device of an app user who never signed in.

    A token longer than an identity can hold (some Web Push endpoints) is stored as a device
    but not as an identity: such a device is reached through its user only.
    """
    model, serializer_class, extra = device_models()[data["type"]]
    fields = ("registration_id", "name", "application_id", "device_id", "active")
    fields += ("p256dh", "auth", "browser")
    payload = {name: data[name] for name in fields if name in data}
    with transaction.atomic():
        instance = (
            model.objects.select_for_update()
            .filter(registration_id=data["registration_id"])
            .order_by("pk")
            .first()
        )
        serializer = serializer_class(instance, data=payload, partial=instance is not None)
        if not serializer.is_valid():
            raise DeviceInvalid(serializer.errors)
        save_kwargs = dict(extra)
        if data.get("user_id") is not None:
            save_kwargs["user_id"] = data["user_id"]
        device = serializer.save(**save_kwargs)
        event = None
        token = data["registration_id"]
        identities = {"device": token} if len(token) <= MAX_VALUE_LENGTH else {}
        if device.active and (identities or data.get("user_id") or data.get("anonymous_id")):
            event = _event(
                key,
                {**data, "identities": identities},
                type=PUSH_DEVICE_REGISTERED,
                now=now,
                payload={"type": data["type"], "device_id": device.pk},
            )
            event.save(force_insert=True)
    return DeviceResult(device=device, type=data["type"], created=instance is None, event=event)


def deactivate_device(*, type: str, registration_id: str) -> int:
    """Stop sending to the devices with this token; return how many there were."""
    model = device_models()[type][0]
    return model.objects.filter(registration_id=registration_id).update(active=False)


# --- consents -----------------------------------------------------------------------------------


@dataclass
class ConsentsResult:
    profile: CustomerProfile
    created: bool
    consents: list[Consent] = field(default_factory=list)


def record_consents(key: ApiKey, data: dict[str, Any], *, now: datetime) -> ConsentsResult:
    """Record grants and withdrawals, with the key's source, on the person's profile.

    A consent needs a profile now (it is not an event the fold could apply later), so:
    the profile holding the strongest identity given; if nobody holds any, a new profile
    with those identities, made here (the fold then joins it like any other). An event
    ``consents_changed`` naming all the identities lets the fold link the rest, or merge
    when they turn out to be two profiles (the consents move with the merge).
    """
    keys = _identity_keys(data)
    result: dict[str, Any] = {}

    def attempt() -> None:
        with transaction.atomic():
            profile = find_profile(keys)
            if profile is None and connection.vendor == "postgresql":
                # About to create identities: wait for a running fold batch, which may be
                # creating the same ones (it would fail on the unique constraint and retry),
                # then look again, since it may just have made this person's profile.
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [FOLD_LOCK_ID])
                profile = find_profile(keys)
            created = profile is None
            if profile is None:
                user_id = data.get("user_id")
                profile = CustomerProfile.objects.create(user_id=user_id, created_at=now)
                Identity.objects.bulk_create(
                    [
                        Identity(profile=profile, kind=kind, value=value, created_at=now)
                        for kind, value in keys
                        if not (
                            kind == IdentityKind.VISITOR
                            and Identity.objects.filter(kind=kind, value=value).exists()
                        )
                    ]
                )
            when = data.get("occurred_at") or now
            for change in data["consents"]:
                record_consent(
                    profile,
                    channel=change["channel"],
                    purpose=change["purpose"],
                    granted=change["granted"],
                    now=when,
                    source=key.source,
                    note=data.get("note", ""),
                )
            _event(
                key,
                data,
                type=CONSENTS_CHANGED,
                now=now,
                payload={"consents": [dict(change) for change in data["consents"]]},
            ).save(force_insert=True)
        result.update(profile=profile, created=created)

    _retry_once_on_conflict(attempt)
    profile = result["profile"]
    latest = current_consents(profile)
    return ConsentsResult(
        profile=profile, created=result["created"], consents=[latest[k] for k in sorted(latest)]
    )


# --- offline orders -----------------------------------------------------------------------------


@dataclass
class OrderResult:
    number: str
    event_id: int | None = None
    duplicate: bool = False
    errors: dict[str, Any] = field(default_factory=dict)
    unknown_lines: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rejected(self) -> bool:
        return bool(self.errors)


def offline_order_event(
    order: dict[str, Any], lines: list[dict[str, Any]], *, now: datetime
) -> Event:
    """An unsaved ORDER_PLACED event of source offline, shaped like ``order_event``'s for an
    online order (same payload keys and line keys), so aggregates, purchased categories and
    segments see both alike. ``payload["store"]`` says which store."""
    customer = order["customer"]
    identities = {
        kind: customer[kind] for kind in ("email", "phone", "loyalty_card") if customer.get(kind)
    }
    payload: dict[str, Any] = {"number": order["number"]}
    if customer.get("first_name") or customer.get("last_name"):
        payload["first_name"] = customer.get("first_name", "")
        payload["last_name"] = customer.get("last_name", "")
    payload["lines"] = lines
    payload["store"] = {"id": order["store"]["id"], "name": order["store"].get("name", "")}
    return Event(
        type=EventType.ORDER_PLACED,
        source=EventSource.OFFLINE,
        identities=identities,
        amount=order["total"],
        currency=order["currency"],
        payload=payload,
        occurred_at=order["occurred_at"],
        recorded_at=now,
    )


def _order_lines(
    order: dict[str, Any], lookup: ProductLookup, result: OrderResult
) -> list[dict[str, Any]]:
    lines = []
    line_errors: dict[int, Any] = {}
    for index, line in enumerate(order["lines"]):
        field_name, problem, ref = lookup.resolve(
            product_id=line.get("product_id"), sku=line.get("sku"), upc=line.get("upc")
        )
        if problem:
            if not order.get("allow_unknown_products"):
                line_errors[index] = {field_name: [problem]}
            else:
                result.unknown_lines.append({"index": index, "field": field_name, "error": problem})
        sku = line.get("sku", "")
        if ref is not None and sku not in {p.sku for p in lookup.by_partner_sku.get(sku, [])}:
            sku = ref.sku  # found by id or UPC: the partner SKU, as online lines have
        lines.append(
            {
                "product_id": ref.pk if ref else None,
                "sku": sku,
                "upc": ref.upc if ref else line.get("upc", ""),
                "title": line.get("title") or (ref.title if ref else ""),
                "quantity": line["quantity"],
                "price": str((line["unit_price"] * line["quantity"]).quantize(CENT)),
            }
        )
    if line_errors:
        result.errors = {"lines": line_errors}
    return lines


def record_offline_orders(
    key: ApiKey, orders: list[dict[str, Any]], *, now: datetime, dry_run: bool = False
) -> list[OrderResult]:
    """Store validated offline orders as ORDER_PLACED events of source offline.

    Per order: refused (``errors``) when a line names an unknown product, unless the order
    allows unknown products (then kept without one and listed in ``unknown_lines``); stored
    once per key and order number (``duplicate`` on a retry). All of the orders given are
    committed together. ``dry_run`` checks everything and writes nothing.
    """
    lookup = ProductLookup.for_references(
        ids={line["product_id"] for o in orders for line in o["lines"] if "product_id" in line},
        skus={line["sku"] for o in orders for line in o["lines"] if "sku" in line},
        upcs={line["upc"] for o in orders for line in o["lines"] if "upc" in line},
    )
    results = [OrderResult(number=order["number"]) for order in orders]
    events = {
        index: offline_order_event(order, _order_lines(order, lookup, results[index]), now=now)
        for index, order in enumerate(orders)
    }
    accepted = {index: event for index, event in events.items() if not results[index].rejected}

    def attempt() -> None:
        with transaction.atomic():
            known = dict(
                ApiEventReceipt.objects.filter(
                    key=key,
                    kind=ReceiptKind.ORDER,
                    client_id__in=[orders[index]["number"] for index in accepted],
                ).values_list("client_id", "event_id")
            )
            new: dict[int, Event] = {}
            for index, event in accepted.items():
                number = orders[index]["number"]
                if number in known:
                    results[index].duplicate = True
                    results[index].event_id = known[number]
                elif any(orders[other]["number"] == number for other in new):
                    results[index].errors = {"number": [_("Repeated in this import.")]}
                else:
                    new[index] = event
            if dry_run or not new:
                return
            rows = Event.objects.bulk_create(list(new.values()))
            ApiEventReceipt.objects.bulk_create(
                [
                    ApiEventReceipt(
                        key=key,
                        kind=ReceiptKind.ORDER,
                        client_id=orders[index]["number"],
                        event=row,
                        created_at=now,
                    )
                    for index, row in zip(new, rows, strict=True)
                ]
            )
            for index, row in zip(new, rows, strict=True):
                results[index].event_id = row.pk

    def reset_and_attempt() -> None:
        for index in accepted:
            if results[index].errors.get("number"):
                results[index].errors = {}
            results[index].duplicate = False
            results[index].event_id = None
        attempt()

    try:
        attempt()
    except IntegrityError:
        reset_and_attempt()
    return results
