"""POST consents/: grants and withdrawals with the key's source, known person or not yet."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from omnichannel.profiles.consents import current_consents, has_consent
from omnichannel.profiles.identity import fold_pending_events
from omnichannel.profiles.models import (
    Consent,
    ConsentSource,
    CustomerProfile,
    Event,
    EventSource,
    IdentityKind,
)
from omnichannel.profiles.recording import record_event

pytestmark = pytest.mark.django_db

URL = reverse("omnichannel-api:consents")


def fold() -> int:
    return fold_pending_events(now=timezone.now(), batch_size=500)


def test_consents_of_a_known_person_go_on_their_profile_with_the_keys_source(till_client):
    record_event("order_placed", source=EventSource.WEB, identities={"email": "ann@example.com"})
    fold()
    profile = CustomerProfile.objects.get()
    response = till_client.post(
        URL,
        {
            "identities": {"email": "Ann@Example.com"},
            "consents": [
                {"channel": "sms", "purpose": "marketing", "granted": True},
                {"channel": "email", "purpose": "marketing", "granted": False},
            ],
            "note": "till sign-up form",
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["profile"] == str(profile.uuid) and body["profile_created"] is False
    assert {(c["channel"], c["purpose"], c["granted"]) for c in body["consents"]} == {
        ("sms", "marketing", True),
        ("email", "marketing", False),
    }
    assert {c.source for c in Consent.objects.all()} == {ConsentSource.OFFLINE}
    assert has_consent(profile, channel="sms", purpose="marketing")
    assert Consent.objects.filter(note="till sign-up form").count() == 2
    assert Event.objects.filter(type="consents_changed", source=EventSource.OFFLINE).exists()


def test_a_person_nobody_knows_yet_gets_a_profile_at_once_which_the_fold_keeps(
    app_client, till_client
):
    response = app_client.post(
        URL,
        {
            "anonymous_id": "install-5",
            "identities": {"device": "fcm-token-5"},
            "consents": [{"channel": "push", "purpose": "marketing", "granted": True}],
        },
        format="json",
    )
    assert response.status_code == 201
    assert response.json()["profile_created"] is True
    profile = CustomerProfile.objects.get()
    assert str(profile.uuid) == response.json()["profile"]
    assert set(profile.identities.values_list("kind", flat=True)) == {
        IdentityKind.VISITOR,
        IdentityKind.DEVICE,
    }
    # Later the app identifies the person, and they buy offline by phone: still one profile,
    # with the consent.
    app_client.post(
        reverse("omnichannel-api:identify"),
        {"anonymous_id": "install-5", "identities": {"phone": "+447911123456"}},
        format="json",
    )
    fold()
    assert CustomerProfile.objects.get() == profile
    assert has_consent(profile, channel="push", purpose="marketing")
    assert Consent.objects.get().source == ConsentSource.APP


def test_a_withdrawal_wins_over_an_earlier_grant(app_client):
    for granted in (True, False):
        response = app_client.post(
            URL,
            {
                "identities": {"phone": "07911 123456"},
                "consents": [{"channel": "sms", "purpose": "marketing", "granted": granted}],
            },
            format="json",
        )
        assert response.status_code == 201
    profile = CustomerProfile.objects.get()
    assert Consent.objects.count() == 2
    assert current_consents(profile)[("sms", "marketing")].granted is False


def test_the_consents_of_two_profiles_one_event_proves_one_person_end_together(app_client):
    record_event("x", identities={"email": "bo@example.com"})
    record_event("x", identities={"phone": "+447911123456"})
    fold()
    assert CustomerProfile.objects.count() == 2
    response = app_client.post(
        URL,
        {
            "identities": {"email": "bo@example.com", "phone": "+447911123456"},
            "consents": [{"channel": "email", "purpose": "marketing", "granted": True}],
        },
        format="json",
    )
    by_email = CustomerProfile.objects.get(identities__kind="email")
    assert response.json()["profile"] == str(by_email.uuid)  # the strongest identity's
    fold()
    (profile,) = CustomerProfile.objects.all()
    assert has_consent(profile, channel="email", purpose="marketing")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"identities": {"email": "a@example.com"}}, "consents"),
        ({"identities": {"email": "a@example.com"}, "consents": []}, "consents"),
        ({"consents": [{"channel": "sms", "purpose": "marketing", "granted": True}]}, "identities"),
        (
            {
                "identities": {"email": "a@example.com"},
                "consents": [{"channel": "fax", "purpose": "marketing", "granted": True}],
            },
            "consents",
        ),
        (
            {
                "identities": {"email": "a@example.com"},
                "consents": [{"channel": "sms", "purpose": "spam", "granted": True}],
            },
            "consents",
        ),
        (
            {
                "identities": {"email": "a@example.com"},
                "consents": [{"channel": "sms", "purpose": "marketing"}],
            },
            "consents",
        ),
        (
            {
                "identities": {"email": "a@example.com"},
                "consents": [{"channel": "sms", "purpose": "marketing", "granted": True}],
                "user_id": 987654,
            },
            "user_id",
        ),
    ],
)
def test_bad_consent_requests_name_the_field(app_client, body, field):
    response = app_client.post(URL, body, format="json")
    assert response.status_code == 400
    assert field in response.json(), response.json()
    assert not Consent.objects.exists() and not CustomerProfile.objects.exists()
