"""Identity resolution: folding new events into profiles, in batches.

For each batch of unprocessed events (oldest first) the resolver

1. loads, in one query, every Identity named by any event of the batch;
2. walks the events in order: an event joins the profile of its strongest known identity;
   when it names identities of two profiles, they are one person and merge (never two
   user accounts); identities nobody holds yet are attached to that profile; an event that
   names only unknown identities starts a new profile;
3. writes new profiles, identities and the events' profile in bulk, then recomputes the
   aggregates of every profile touched.

The number of queries per batch does not grow with the number of events, except for
merges, which are rare and each cost a few queries.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from functools import reduce
from operator import or_

from django.db import connection, transaction
from django.db.models import Q

from ..exceptions import InvalidIdentity
from ..signals import events_folded
from .aggregates import refresh_aggregates
from .merge import MergeRefused, merge_profiles
from .models import IDENTITY_STRENGTH, CustomerProfile, Event, Identity, IdentityKind
from .normalise import normalise_identity
from .sql import update_ids_from_pairs

logger = logging.getLogger("omnichannel.profiles")

Key = tuple[str, str]  # (IdentityKind value, normalised value)
_STRENGTH = {str(kind): rank for rank, kind in enumerate(IDENTITY_STRENGTH)}
#: Arbitrary constant for pg_try_advisory_xact_lock: one folder at a time on PostgreSQL.
FOLD_LOCK_ID = 0x0C_F01D


def event_identity_keys(event: Event) -> list[Key]:
    """The normalised identities an event names, strongest first; invalid values are skipped."""
    keys: list[Key] = []
    if event.user_id is not None:
        keys.append((IdentityKind.USER, str(event.user_id)))
    if event.visitor_key:
        keys.append((IdentityKind.VISITOR, event.visitor_key))
    extra = event.identities if isinstance(event.identities, dict) else {}
    for kind, value in extra.items():
        if kind not in _STRENGTH or kind == IdentityKind.USER or value in (None, ""):
            continue
        try:
            keys.append((kind, normalise_identity(kind, value)))
        except InvalidIdentity as exc:
            logger.warning("event %s: ignoring %s identity: %s", event.pk, kind, exc)
    unique = list(dict.fromkeys((str(kind), value) for kind, value in keys))
    return sorted(unique, key=lambda key: _STRENGTH[key[0]])


@dataclass(eq=False)
class _NewProfile:
    """A profile this batch will create (or that merged into another target)."""

    user_id: int | None = None
    alias: Target | None = None
    saved: CustomerProfile | None = None


Target = int | _NewProfile  # an existing profile's id, or one to create


@dataclass
class _Resolver:
    events: list[Event]
    owner: dict[Key, Target] = field(default_factory=dict)
    user_of: dict[int, int | None] = field(default_factory=dict)  # existing profile -> user id
    redirect: dict[int, int] = field(default_factory=dict)  # merged id -> survivor id
    new_profiles: list[_NewProfile] = field(default_factory=list)
    new_identities: dict[Key, Target] = field(default_factory=dict)
    user_updates: dict[int, int] = field(default_factory=dict)
    targets: dict[int, Target] = field(default_factory=dict)  # event id -> target

    def preload(self, keys_by_event: dict[int, list[Key]]) -> None:
        wanted: dict[str, set[str]] = {}
        for keys in keys_by_event.values():
            for kind, value in keys:
                wanted.setdefault(kind, set()).add(value)
        if not wanted:
            return
        condition = reduce(or_, (Q(kind=k, value__in=v) for k, v in wanted.items()))
        rows = Identity.objects.filter(condition).values_list("kind", "value", "profile_id")
        for kind, value, profile_id in rows:
            self.owner[(kind, value)] = profile_id
        # A profile may hold an account without its USER identity (made in the admin or by
        # code): it still owns that user, or a new profile would collide with it.
        user_ids = {int(value) for value in wanted.get(IdentityKind.USER, ())}
        for user_id, profile_id in CustomerProfile.objects.filter(user_id__in=user_ids).values_list(
            "user_id", "pk"
        ):
            key = (str(IdentityKind.USER), str(user_id))
            if key not in self.owner:
                self.owner[key] = profile_id
                self.new_identities[key] = profile_id
        profile_ids = {pid for pid in self.owner.values() if isinstance(pid, int)}
        self.user_of.update(
            CustomerProfile.objects.filter(pk__in=profile_ids).values_list("pk", "user_id")
        )

    def find(self, target: Target) -> Target:
        while True:
            if isinstance(target, _NewProfile) and target.alias is not None:
                target = target.alias
            elif isinstance(target, int) and target in self.redirect:
                target = self.redirect[target]
            else:
                return target

    def user_id(self, target: Target) -> int | None:
        if isinstance(target, _NewProfile):
            return target.user_id
        return self.user_updates.get(target) or self.user_of.get(target)

    def set_user(self, target: Target, user_id: int) -> None:
        if isinstance(target, _NewProfile):
            target.user_id = user_id
        else:
            self.user_updates[target] = user_id

    def resolve(self, event: Event, keys: list[Key]) -> None:
        if not keys:
            return  # names nobody: it stays in the log without a profile
        reached: dict[Target, set[str]] = {}  # in order of strength: dicts keep insertion order
        for key in keys:
            if key in self.owner:
                reached.setdefault(self.find(self.owner[key]), set()).add(key[0])
        found = list(reached)
        if keys[0][0] != IdentityKind.USER and keys[0][0] != IdentityKind.VISITOR:
            # A browser cookie is weak evidence: on a shared computer it belongs to whoever
            # signed in there first. It never brings a guest's email, phone or card into
            # another account's profile; the guest gets a profile of their own.
            found = [
                t
                for t in found
                if not (reached[t] == {IdentityKind.VISITOR} and self.user_id(t) is not None)
            ]
        if keys[0][0] == IdentityKind.USER:
            # An event of a signed-in user never joins another account's profile (a shared
            # tablet's visitor key stays with whoever used it first).
            event_user = int(keys[0][1])
            others = [t for t in found if self.user_id(t) not in (None, event_user)]
            if others:
                logger.warning(
                    "event %s of user %s names identities of two user accounts: not merged",
                    event.pk,
                    event_user,
                )
                found = [t for t in found if t not in others]
        if not found:
            target = _NewProfile()
            self.new_profiles.append(target)
        else:
            target = found[0]
            for other in found[1:]:
                target = self.merge(target, other, event)
        for kind, value in keys:
            key = (kind, value)
            if key not in self.owner:
                self.owner[key] = target
                self.new_identities[key] = target
                if kind == IdentityKind.USER and self.user_id(target) is None:
                    self.set_user(target, int(value))
        self.targets[event.pk] = target

    def merge(self, a: Target, b: Target, event: Event) -> Target:
        user_a, user_b = self.user_id(a), self.user_id(b)
        if user_a is not None and user_b is not None and user_a != user_b:
            logger.warning(
                "event %s names identities of two user accounts (%s, %s): not merged",
                event.pk,
                user_a,
                user_b,
            )
            return a
        if isinstance(b, _NewProfile) or isinstance(a, _NewProfile):
            new, other = (b, a) if isinstance(b, _NewProfile) else (a, b)
            if isinstance(other, _NewProfile) and new.user_id is not None:
                new, other = other, new  # keep the one that holds the account
            if new.user_id is not None:
                self.set_user(other, new.user_id)
            new.alias = other
            return other
        # Two stored profiles: merge them in the database now (rare).
        for pid in (a, b):
            if pid in self.user_updates:
                user_id = self.user_updates.pop(pid)
                CustomerProfile.objects.filter(pk=pid).update(user_id=user_id)
                self.user_of[pid] = user_id
        profiles = CustomerProfile.objects.in_bulk([a, b])
        try:
            survivor = merge_profiles(
                profiles[a],
                profiles[b],
                reason=f"event {event.pk} ({event.type}) names identities of both",
                event=event,
            )
        except MergeRefused as exc:
            logger.warning("event %s: %s", event.pk, exc)
            return a
        merged = b if survivor.pk == a else a
        self.redirect[merged] = survivor.pk
        self.user_of[survivor.pk] = survivor.user_id
        return survivor.pk

    def write(self, *, now: datetime) -> set[int]:
        """Create the new profiles and identities, attach the events; return touched ids."""
        roots = [p for p in self.new_profiles if p.alias is None]
        created = CustomerProfile.objects.bulk_create(
            [CustomerProfile(user_id=p.user_id, created_at=now) for p in roots]
        )
        for new, saved in zip(roots, created, strict=True):
            new.saved = saved

        def profile_id(target: Target) -> int:
            target = self.find(target)
            if isinstance(target, _NewProfile):
                return target.saved.pk  # type: ignore[union-attr]  (saved just above)
            return target

        if self.user_updates:
            update_ids_from_pairs(CustomerProfile, "user", list(self.user_updates.items()))
        Identity.objects.bulk_create(
            [
                Identity(profile_id=profile_id(target), kind=kind, value=value, created_at=now)
                for (kind, value), target in self.new_identities.items()
            ]
        )
        attached: list[tuple[int, int]] = []
        for event in self.events:
            target = self.targets.get(event.pk)
            event.profile_id = profile_id(target) if target is not None else None
            event.processed_at = now
            if event.profile_id is not None:
                attached.append((event.pk, event.profile_id))
        update_ids_from_pairs(Event, "profile", attached, also={"processed_at": now})
        nobody = [event.pk for event in self.events if event.profile_id is None]
        if nobody:
            Event.objects.filter(pk__in=nobody).update(processed_at=now)
        touched = {profile for _, profile in attached}
        touched |= set(self.redirect.values())
        return touched


def _take_fold_lock(*, wait: bool = False) -> bool:
    """Take the folders' lock for this transaction; False if another holds it (unless wait)."""
    if connection.vendor != "postgresql":
        return True  # SQLite serialises writers itself (IMMEDIATE transactions, see docs)
    function = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {function}(%s)::text", [FOLD_LOCK_ID])
        return cursor.fetchone()[0] in ("", "true")


def refresh_aggregates_locked(profile_ids: list[int], *, now: datetime) -> int:
    """refresh_aggregates under the folders' lock, so a running fold cannot interleave."""
    with transaction.atomic():
        _take_fold_lock(wait=True)
        return refresh_aggregates(profile_ids, now=now)


def fold_event_batch(*, now: datetime, batch_size: int, refresh: bool = True) -> int:
    """Fold up to ``batch_size`` unprocessed events into profiles; return how many.

    ``refresh=False`` leaves the aggregates of the touched profiles stale, for a caller that
    recomputes every profile afterwards (the rebuild command). Returns -1 when another worker
    is folding right now (PostgreSQL advisory lock).
    """
    with transaction.atomic():
        if not _take_fold_lock():
            return -1
        events = list(Event.objects.filter(processed_at__isnull=True).order_by("pk")[:batch_size])
        if not events:
            return 0
        keys_by_event = {event.pk: event_identity_keys(event) for event in events}
        resolver = _Resolver(events)
        resolver.preload(keys_by_event)
        for event in events:
            resolver.resolve(event, keys_by_event[event.pk])
        touched = resolver.write(now=now)
        if refresh:
            refresh_aggregates(touched, now=now)
    events_folded.send(sender=Event, events=events, profile_ids=touched)
    return len(events)


def fold_pending_events(*, now: datetime, batch_size: int, max_batches: int | None = None) -> int:
    """Fold unprocessed events batch after batch until none is left (or ``max_batches``)."""
    total = 0
    batches = 0
    while max_batches is None or batches < max_batches:
        folded = fold_event_batch(now=now, batch_size=batch_size)
        if folded <= 0:
            break
        total += folded
        batches += 1
    return total
