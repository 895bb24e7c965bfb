"""POST identify/: an anonymous app install linked to a known person, merged by the fold."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from omnichannel.profiles.identity import fold_pending_events
from omnichannel.profiles.models import (
    CustomerProfile,
    Event,
    EventSource,
    Identity,
    IdentityKind,
    ProfileMerge,
)
from omnichannel.profiles.recording import record_event, registration_event, save_event

pytestmark = pytest.mark.django_db

URL = reverse("omnichannel-api:identify")
EVENTS = reverse("omnichannel-api:events")


def fold() -> int:
    return fold_pending_events(now=timezone.now(), batch_size=500)


def test_identify_merges_the_app_installs_profile_into_the_web_customers(
    app_client, django_user_model
):
    customer = django_user_model.objects.create_user("ann", "ann@example.com", "x")
    save_event(registration_event(customer, visitor_key="c" * 32))
    app_client.post(
        EVENTS,
        {"events": [{"client_id": "1", "type": "app_opened", "anonymous_id": "install-9"}]},
        format="json",
    )
    fold()
    assert CustomerProfile.objects.count() == 2
    web = CustomerProfile.objects.get(user=customer)

    response = app_client.post(
        URL,
        {"anonymous_id": "install-9", "identities": {"email": "ANN@example.com"}},
        format="json",
    )
    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["status"] == "pending"
    assert body["profile"] == str(web.uuid)  # the email's profile, known before the fold
    event = Event.objects.get(pk=body["event_id"])
    assert event.type == "identified" and event.source == EventSource.APP
    assert event.visitor_key == "install-9"
    assert event.identities == {"email": "ann@example.com"}
    assert event.processed_at is None  # not folded inline

    fold()
    profile = CustomerProfile.objects.get()
    assert profile.pk == web.pk and profile.user == customer
    assert profile.seen_on_web and profile.seen_on_app
    assert Identity.objects.get(kind=IdentityKind.VISITOR, value="install-9").profile == profile
    assert ProfileMerge.objects.filter(survivor=profile).count() == 1


def test_identify_with_a_user_id_and_a_loyalty_card(app_client, django_user_model):
    user = django_user_model.objects.create_user("bob", "bob@example.com", "x")
    response = app_client.post(
        URL,
        {"anonymous_id": "install-2", "user_id": user.pk, "identities": {"loyalty_card": "ab 12"}},
        format="json",
    )
    assert response.status_code == 202
    assert response.json()["profile"] is None  # nobody holds any of them yet
    fold()
    profile = CustomerProfile.objects.get()
    assert profile.user == user
    assert set(profile.identities.values_list("kind", "value")) == {
        (IdentityKind.USER, str(user.pk)),
        (IdentityKind.VISITOR, "install-2"),
        (IdentityKind.LOYALTY_CARD, "AB12"),
    }


def test_an_anonymous_id_alone_does_not_pull_a_named_person_into_its_profile(
    app_client, django_user_model
):
    user = django_user_model.objects.create_user("cat", "cat@example.com", "x")
    record_event("app_opened", source=EventSource.APP, user=user, visitor_key="shared-tablet")
    fold()
    response = app_client.post(
        URL,
        {"anonymous_id": "shared-tablet", "identities": {"email": "guest@example.com"}},
        format="json",
    )
    assert response.json()["profile"] is None  # not the tablet owner's profile


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({}, "identities", "Nothing to link"),
        ({"anonymous_id": "i-1"}, "identities", "Nothing to link"),
        ({"identities": {"email": "a@example.com"}}, "identities", "Nothing to link"),
        ({"anonymous_id": "i", "user_id": 999999}, "user_id", "No user with id 999999"),
        ({"anonymous_id": "i", "user_id": 0}, "user_id", "greater than or equal to 1"),
        ({"anonymous_id": "i", "user_id": "x"}, "user_id", "valid integer"),
        ({"anonymous_id": " ", "identities": {"email": "a@example.com"}}, "anonymous_id", ""),
        ({"anonymous_id": "i", "identities": {"phone": "+1"}}, "identities", "phone"),
        ({"anonymous_id": "i", "identities": {"telegram": "5"}}, "identities", "Unknown"),
        ({"anonymous_id": "i", "identities": {"email": "a@example.com"}, "x": 1}, "x", "Unknown"),
    ],
)
def test_bad_identify_requests_name_the_field(app_client, body, field, message):
    response = app_client.post(URL, body, format="json")
    assert response.status_code == 400
    errors = response.json()
    assert field in errors, errors
    assert message in str(errors[field])
    assert not Event.objects.exists()
