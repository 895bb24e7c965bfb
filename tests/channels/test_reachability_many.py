"""Reachability of many people at once: the same answers as one by one, in a few queries.

``reachability_many`` must give, for every profile, exactly what ``reachability`` gives (address
and reason text), whatever mix of people it is given; ``reachable_queryset`` (the SQL twin the
mass fan-out uses) may leave a person out when it cannot be sure, but never lets in someone
``reachability`` refuses, nor with another address.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from push_notifications.models import APNSDevice, GCMDevice, WebPushDevice

from omnichannel.channels.base import REACH_ADDRESS, BaseChannel, Reach
from omnichannel.channels.models import Suppression, SuppressionReason
from omnichannel.channels.registry import get_channel
from omnichannel.profiles.consents import record_consent
from omnichannel.profiles.models import CustomerProfile, Identity, IdentityKind

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
CHANNELS = {
    "email": {"BACKEND": "omnichannel.channels.email.EmailChannel", "OPTIONS": {"OUTBOX": True}},
    # A second email channel: its suppressions hold for "email" too.
    "newsletter": {
        "BACKEND": "omnichannel.channels.email.EmailChannel",
        "OPTIONS": {"OUTBOX": True},
    },
    "sms": {
        "BACKEND": "omnichannel.channels.sms.SmsChannel",
        "OPTIONS": {"OUTBOX": True, "FROM": "Shop"},
    },
    "telegram": {
        "BACKEND": "omnichannel.channels.telegram.TelegramChannel",
        "OPTIONS": {"OUTBOX": True},
    },
    "push": {"BACKEND": "omnichannel.channels.push.MobilePushChannel", "OPTIONS": {"OUTBOX": True}},
    "webpush": {
        "BACKEND": "omnichannel.channels.push.WebPushChannel",
        "OPTIONS": {"OUTBOX": True},
    },
}
CONSENT_CHANNEL = {
    "email": "email",
    "newsletter": "email",
    "sms": "sms",
    "telegram": "messenger",
    "push": "push",
    "webpush": "webpush",
}


@pytest.fixture(autouse=True)
def channels(settings):
    settings.OMNICHANNEL = {**django_settings.OMNICHANNEL, "CHANNELS": CHANNELS}


_serial = itertools.count(1)


def _identity(profile: CustomerProfile, kind: str, value: str, *, age_days: float = 0) -> None:
    Identity.objects.create(
        profile=profile, kind=kind, value=value, created_at=NOW - timedelta(days=age_days)
    )


def _consent(profile: CustomerProfile, channel: str, purpose: str, granted: bool, age: float = 0):
    record_consent(
        profile,
        channel=channel,
        purpose=purpose,
        granted=granted,
        now=NOW - timedelta(days=age),
    )


def _grant_all(profile: CustomerProfile, purpose: str = "marketing") -> None:
    for channel in set(CONSENT_CHANNEL.values()):
        _consent(profile, channel, purpose, True, age=30)


# Each scenario builds one person (given a serial number n) with what every channel looks at:
# email (account, identities), phone, Telegram chat, devices, consents, suppressions.


def everything(n: int, user_model) -> CustomerProfile:
    """Reachable everywhere: account email, phone, chat, devices, all consents."""
    user = user_model.objects.create_user(f"u{n}", f" User{n}@Example.COM ", "x")
    profile = CustomerProfile.objects.create(user=user)
    _identity(profile, IdentityKind.EMAIL, f"user{n}@example.com", age_days=5)
    _identity(profile, IdentityKind.PHONE, f"+4477009{n:05d}")
    _identity(profile, IdentityKind.TELEGRAM, str(1000 + n))
    GCMDevice.objects.create(user=user, registration_id=f"fcm-{n}", cloud_message_type="FCM")
    APNSDevice.objects.create(user=user, registration_id=f"apns-{n}")
    WebPushDevice.objects.create(user=user, registration_id=f"wp-{n}", p256dh="k", auth="a")
    _grant_all(profile)
    _grant_all(profile, "transactional")
    return profile


def guest_with_identities(n: int, user_model) -> CustomerProfile:
    """No account: the latest of several email identities, two phones, an anonymous device."""
    profile = CustomerProfile.objects.create()
    _identity(profile, IdentityKind.EMAIL, f"old{n}@example.com", age_days=10)
    _identity(profile, IdentityKind.EMAIL, f"new{n}@example.com", age_days=1)
    _identity(profile, IdentityKind.PHONE, f"+4477008{n:05d}", age_days=3)
    _identity(profile, IdentityKind.PHONE, f"+4477007{n:05d}", age_days=2)
    _identity(profile, IdentityKind.DEVICE, f"anon-{n}")
    GCMDevice.objects.create(registration_id=f"anon-{n}", cloud_message_type="FCM")
    _identity(profile, IdentityKind.TELEGRAM, str(9000 + n), age_days=4)
    _identity(profile, IdentityKind.TELEGRAM, str(8000 + n), age_days=1)
    _identity(profile, IdentityKind.DEVICE, f"wanon-{n}")
    WebPushDevice.objects.create(registration_id=f"wanon-{n}", p256dh="k", auth="a")
    _grant_all(profile)
    return profile


def nobody(n: int, user_model) -> CustomerProfile:
    """No address anywhere (consents do not help)."""
    profile = CustomerProfile.objects.create()
    _grant_all(profile)
    return profile


def withdrawn(n: int, user_model) -> CustomerProfile:
    """Granted, then withdrawn (the latest record wins), on every channel."""
    profile = guest_with_identities(n, user_model)
    for channel in set(CONSENT_CHANNEL.values()):
        _consent(profile, channel, "marketing", False)
        _consent(profile, channel, "transactional", False)
    return profile


def no_consent(n: int, user_model) -> CustomerProfile:
    """Addresses but no consent record: marketing refused, transactional allowed."""
    profile = CustomerProfile.objects.create()
    _identity(profile, IdentityKind.EMAIL, f"nc{n}@example.com")
    _identity(profile, IdentityKind.PHONE, f"+4477006{n:05d}")
    _identity(profile, IdentityKind.TELEGRAM, str(5000 + n))
    return profile


def suppressed_marketing(n: int, user_model) -> CustomerProfile:
    """Suppressed for marketing only, on the *other* email channel (holds for both)."""
    profile = guest_with_identities(n, user_model)
    _grant_all(profile, "transactional")
    Suppression.objects.create(
        channel="newsletter", address=f"new{n}@example.com", reason=SuppressionReason.COMPLAINED
    )
    Suppression.objects.create(
        channel="sms", address=f"+4477007{n:05d}", reason=SuppressionReason.MANUAL
    )
    return profile


def suppressed_everything(n: int, user_model) -> CustomerProfile:
    """Suppressed for transactional messages too (a hard bounce)."""
    profile = guest_with_identities(n, user_model)
    _grant_all(profile, "transactional")
    Suppression.objects.create(
        channel="email",
        address=f"new{n}@example.com",
        reason=SuppressionReason.BOUNCED,
        transactional_too=True,
    )
    Suppression.objects.create(
        channel="sms",
        address=f"+4477007{n:05d}",
        reason=SuppressionReason.INVALID,
        transactional_too=True,
    )
    # The first suppression (by pk) decides for transactional: this one does not block.
    Suppression.objects.create(
        channel="email", address=f"first{n}@example.com", reason=SuppressionReason.MANUAL
    )
    Suppression.objects.create(
        channel="newsletter",
        address=f"first{n}@example.com",
        reason=SuppressionReason.BOUNCED,
        transactional_too=True,
    )
    _identity(profile, IdentityKind.EMAIL, f"first{n}@example.com")
    return profile


def account_without_identity(n: int, user_model) -> CustomerProfile:
    """The account email wins over identities, even when no identity holds it."""
    user = user_model.objects.create_user(f"acc{n}", f"Account{n}@example.com", "x")
    profile = CustomerProfile.objects.create(user=user)
    _identity(profile, IdentityKind.EMAIL, f"ident{n}@example.com")
    _grant_all(profile)
    return profile


def broken_account_email(n: int, user_model) -> CustomerProfile:
    """A legacy account with an invalid email: the latest identity is used instead."""
    user = user_model.objects.create_user(f"bad{n}", "not an email", "x")
    profile = CustomerProfile.objects.create(user=user)
    _identity(profile, IdentityKind.EMAIL, f"fallback{n}@example.com")
    _grant_all(profile)
    return profile


def broken_everything(n: int, user_model) -> CustomerProfile:
    """An invalid account email and an identity stored unnormalised (imported by hand)."""
    user = user_model.objects.create_user(f"worse{n}", "nope", "x")
    profile = CustomerProfile.objects.create(user=user)
    _identity(profile, IdentityKind.EMAIL, f" Mixed{n}@Example.com")
    _grant_all(profile)
    return profile


def inactive_devices(n: int, user_model) -> CustomerProfile:
    """Only inactive devices, someone else's device named by nobody, a GCM (not FCM) device."""
    user = user_model.objects.create_user(f"dev{n}", "", "x")
    profile = CustomerProfile.objects.create(user=user)
    GCMDevice.objects.create(
        user=user, registration_id=f"off-{n}", cloud_message_type="FCM", active=False
    )
    GCMDevice.objects.create(user=user, registration_id=f"gcm-{n}", cloud_message_type="GCM")
    other = user_model.objects.create_user(f"other{n}", "", "x")
    GCMDevice.objects.create(user=other, registration_id=f"taken-{n}", cloud_message_type="FCM")
    _identity(profile, IdentityKind.DEVICE, f"taken-{n}")
    WebPushDevice.objects.create(
        user=user, registration_id=f"wpoff-{n}", p256dh="k", auth="a", active=False
    )
    _grant_all(profile)
    return profile


def many_devices(n: int, user_model) -> CustomerProfile:
    """Two FCM devices of the account plus an anonymous one; APNs and web push of the account."""
    user = user_model.objects.create_user(f"many{n}", f"many{n}@example.com", "x")
    profile = CustomerProfile.objects.create(user=user)
    _identity(profile, IdentityKind.EMAIL, f"many{n}@example.com")
    for k in range(2):
        GCMDevice.objects.create(user=user, registration_id=f"m{n}-{k}", cloud_message_type="FCM")
    GCMDevice.objects.create(registration_id=f"manyanon-{n}", cloud_message_type="FCM")
    _identity(profile, IdentityKind.DEVICE, f"manyanon-{n}")
    APNSDevice.objects.create(user=user, registration_id=f"mapns-{n}")
    WebPushDevice.objects.create(user=user, registration_id=f"mwp-{n}", p256dh="k", auth="a")
    _grant_all(profile)
    _consent(profile, "email", "transactional", False)
    return profile


#: The first five cover every query a batch can make (accounts, identities, consents,
#: suppressions), so 5 and 50 people must cost the same number of queries.
SCENARIOS: list[Callable[[int, object], CustomerProfile]] = [
    everything,
    guest_with_identities,
    suppressed_marketing,
    many_devices,
    nobody,
    withdrawn,
    no_consent,
    suppressed_everything,
    account_without_identity,
    broken_account_email,
    broken_everything,
    inactive_devices,
]


def make_people(count: int, user_model) -> list[CustomerProfile]:
    people = []
    for scenario in itertools.islice(itertools.cycle(SCENARIOS), count):
        people.append(scenario(next(_serial), user_model))
    return people


def fresh(people: list[CustomerProfile]) -> list[CustomerProfile]:
    """The profiles as a caller would load them (no user cached)."""
    by_pk = CustomerProfile.objects.in_bulk([p.pk for p in people])
    return [by_pk[p.pk] for p in people]


@pytest.fixture
def people(django_user_model) -> list[CustomerProfile]:
    return fresh(make_people(2 * len(SCENARIOS), django_user_model))


@pytest.mark.parametrize("transactional_requires_consent", [False, True])
def test_many_is_the_same_as_one_by_one(settings, people, transactional_requires_consent):
    settings.OMNICHANNEL = {
        **settings.OMNICHANNEL,
        "TRANSACTIONAL_REQUIRES_CONSENT": transactional_requires_consent,
    }
    for name, purpose in itertools.product(sorted(CHANNELS), ["marketing", "transactional"]):
        channel = get_channel(name)
        one_by_one = {p.pk: channel.reachability(p, purpose) for p in fresh(people)}
        assert channel.reachability_many(people, purpose) == one_by_one, (name, purpose)
        # The mix really is a mix: someone reachable, someone not, for a reason of each kind.
        reasons = {r.reason.split(":")[0].split(" consent")[0] for r in one_by_one.values()}
        assert any(reach.ok for reach in one_by_one.values()), (name, purpose)
        assert len(reasons) >= 3, (name, purpose, reasons)


def test_the_mix_covers_the_cases(people):
    """A spot check that the scenarios say what they mean."""
    reach = get_channel("email").reachability_many(people, "marketing")
    everyone, guest, suppressed, _many, none, withdrawn_, no_consent_ = (
        reach[p.pk] for p in people[:7]
    )
    assert everyone.ok and everyone.address.startswith("user")  # the account email, normalised
    assert guest.ok and guest.address.startswith("new")  # the latest identity
    assert suppressed == Reach(suppressed.address, "address suppressed: Spam complaint")
    assert none == Reach(None, "no email address, device or chat for this person")
    assert withdrawn_.reason == "marketing consent for email withdrawn"
    assert no_consent_.reason == "marketing consent for email not given"
    assert reach[people[9].pk].address.startswith("fallback")  # invalid account email
    assert reach[people[10].pk].address.startswith("mixed")  # identity normalised on read
    push = get_channel("push").reachability_many(people, "marketing")
    assert push[people[3].pk] == Reach("fcm:3 apns:1")
    assert push[people[11].pk].address is None  # inactive, GCM-only and someone else's


def test_queries_do_not_grow_with_the_number_of_people(django_user_model):
    people = fresh(make_people(50, django_user_model))
    for name in sorted(CHANNELS):
        channel = get_channel(name)
        counts = []
        for batch in (people[:5], people):
            with CaptureQueriesContext(connection) as queries:
                result = channel.reachability_many(batch, "marketing")
            assert len(result) == len(batch)
            counts.append(len(queries))
        assert counts[0] == counts[1], (name, counts)
        assert counts[1] <= 6, (name, counts)


def test_empty_batch_costs_nothing():
    with CaptureQueriesContext(connection) as queries:
        assert get_channel("email").reachability_many([], "marketing") == {}
    assert len(queries) == 0


def test_a_channel_of_your_own_gets_the_slow_but_exact_default(settings, people):
    """get_addresses falls back to get_address per person; an overridden reachability is
    called per person so the two cannot disagree."""

    class Odd(BaseChannel):
        consent_channel = "sms"

        def get_address(self, profile):
            return f"odd-{profile.pk}" if profile.pk % 2 else None

    class Stricter(Odd):
        def reachability(self, profile, purpose):
            return Reach(None, "never on Sundays")

    odd = Odd("odd", cost=0, currency="EUR", options={})
    assert odd.reachability_many(people, "transactional") == {
        p.pk: odd.reachability(p, "transactional") for p in people
    }
    assert odd.address_expression() is None
    assert odd.reachable_queryset(CustomerProfile.objects.all(), "marketing") is None
    strict = Stricter("strict", cost=0, currency="EUR", options={})
    assert set(strict.reachability_many(people, "marketing").values()) == {
        Reach(None, "never on Sundays")
    }


def test_an_overridden_get_address_is_what_the_batch_uses(settings, people):
    from omnichannel.channels.email import EmailChannel

    class Shouting(EmailChannel):
        def get_address(self, profile):
            address = super().get_address(profile)
            return address.upper() if address else None

    channel = Shouting("shouting", cost=0, currency="EUR", options={})
    expected = {p.pk: channel.get_address(p) for p in people}
    assert channel.get_addresses(people) == expected
    assert channel.address_expression() is None


# --- the SQL twin ----------------------------------------------------------------------------


@pytest.mark.parametrize("transactional_requires_consent", [False, True])
def test_the_sql_rules_agree_with_reachability(settings, people, transactional_requires_consent):
    settings.OMNICHANNEL = {
        **settings.OMNICHANNEL,
        "TRANSACTIONAL_REQUIRES_CONSENT": transactional_requires_consent,
    }
    # Left out although reachable: only people whose account email SQL cannot vouch for
    # (no email identity holds it: it may be invalid, and then an identity is used instead).
    unsure = {
        p.pk
        for p in CustomerProfile.objects.filter(pk__in=[p.pk for p in people]).select_related(
            "user"
        )
        if p.user
        and p.user.email
        and not Identity.objects.filter(kind="email", value=p.user.email.strip().lower()).exists()
    }
    assert unsure
    for name, purpose in itertools.product(
        ["email", "newsletter", "sms", "telegram"], ["marketing", "transactional"]
    ):
        channel = get_channel(name)
        expected = channel.reachability_many(people, purpose)
        queryset = channel.reachable_queryset(
            CustomerProfile.objects.filter(pk__in=[p.pk for p in people]), purpose
        )
        found = dict(queryset.values_list("pk", REACH_ADDRESS))
        for pk, address in found.items():
            assert expected[pk] == Reach(address), (name, purpose, pk, expected[pk])
        left_out = {pk for pk, reach in expected.items() if reach.ok and pk not in found}
        assert left_out <= unsure, (name, purpose, left_out - unsure)
        assert found, (name, purpose)


def test_push_has_no_sql_address():
    assert get_channel("push").reachable_queryset(CustomerProfile.objects.all(), "x") is None
    assert get_channel("webpush").address_expression() is None


@pytest.mark.parametrize("transactional_requires_consent", [False, True])
def test_candidates_then_address_checks_make_the_same_set(
    settings, people, transactional_requires_consent
):
    """reach_candidates + address_allowed_sql on the stored address (the fan-out's way on
    PostgreSQL) select exactly what reachable_queryset selects."""
    settings.OMNICHANNEL = {
        **settings.OMNICHANNEL,
        "TRANSACTIONAL_REQUIRES_CONSENT": transactional_requires_consent,
    }
    profiles = CustomerProfile.objects.filter(pk__in=[p.pk for p in people])
    for name, purpose in itertools.product(
        ["email", "newsletter", "sms", "telegram"], ["marketing", "transactional"]
    ):
        channel = get_channel(name)
        expected = dict(
            channel.reachable_queryset(profiles, purpose).values_list("pk", REACH_ADDRESS)
        )
        candidates = (
            channel.reach_candidates(profiles, purpose)
            .annotate(c_id=F("pk"))
            .values("c_id", REACH_ADDRESS)
        )
        sql, params = candidates.query.sql_with_params()
        allowed, allowed_params = channel.address_allowed_sql("c.reach_address", purpose)
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT c.c_id, c.reach_address FROM ({sql}) c WHERE {allowed}",  # noqa: S608
                [*params, *allowed_params],
            )
            found = dict(cursor.fetchall())
        assert found == expected, (name, purpose)
        assert found, (name, purpose)
