"""POST devices/ and devices/deactivate/: push devices on django-push-notifications' models."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone
from push_notifications.models import APNSDevice, GCMDevice, WebPushDevice

from omnichannel.profiles.identity import fold_pending_events
from omnichannel.profiles.models import CustomerProfile, Event, EventSource, Identity, IdentityKind

pytestmark = pytest.mark.django_db

URL = reverse("omnichannel-api:devices")
DEACTIVATE = reverse("omnichannel-api:devices-deactivate")
FCM_TOKEN = "fcm-token-" + "a" * 140
APNS_TOKEN = "ab" * 32
ENDPOINT = "https://push.example.com/wpush/v2/" + "x" * 80


def fold() -> int:
    return fold_pending_events(now=timezone.now(), batch_size=500)


def test_an_anonymous_app_users_fcm_device_becomes_an_identity_of_their_profile(app_client):
    response = app_client.post(
        URL,
        {
            "type": "fcm",
            "registration_id": FCM_TOKEN,
            "anonymous_id": "install-1",
            "name": "Pixel",
            "device_id": "0x1f",
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    device = GCMDevice.objects.get()
    assert body["id"] == device.pk and body["created"] and body["active"]
    assert (device.cloud_message_type, device.name, device.device_id) == ("FCM", "Pixel", 31)
    assert device.user is None
    event = Event.objects.get(pk=body["event_id"])
    assert event.type == "push_device_registered" and event.source == EventSource.APP
    assert event.identities == {"device": FCM_TOKEN} and event.visitor_key == "install-1"

    fold()
    profile = CustomerProfile.objects.get()
    assert Identity.objects.get(kind=IdentityKind.DEVICE).value == FCM_TOKEN
    assert Identity.objects.get(kind=IdentityKind.VISITOR).profile == profile
    assert profile.devices_count == 1
    # What the push channel looks for: active user-less devices named by a device identity.
    tokens = profile.identities.filter(kind=IdentityKind.DEVICE).values("value")
    assert GCMDevice.objects.filter(registration_id__in=tokens, user__isnull=True, active=True)


def test_registering_again_updates_the_device_and_links_the_user(app_client, django_user_model):
    user = django_user_model.objects.create_user("ann", "ann@example.com", "x")
    first = app_client.post(URL, {"type": "apns", "registration_id": APNS_TOKEN}, format="json")
    assert first.status_code == 201
    again = app_client.post(
        URL,
        {"type": "apns", "registration_id": APNS_TOKEN, "user_id": user.pk, "name": "iPhone"},
        format="json",
    )
    assert again.status_code == 200, again.json()
    assert again.json()["created"] is False and again.json()["id"] == first.json()["id"]
    device = APNSDevice.objects.get()
    assert (device.user, device.name) == (user, "iPhone")
    assert Event.objects.filter(type="push_device_registered").count() == 2


def test_web_push_device(app_client):
    response = app_client.post(
        URL,
        {
            "type": "webpush",
            "registration_id": ENDPOINT,
            "p256dh": "B" * 87,
            "auth": "a" * 22,
            "browser": "FIREFOX",
            "anonymous_id": "visitor-1",
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    device = WebPushDevice.objects.get()
    assert (device.browser, device.auth) == ("FIREFOX", "a" * 22)
    assert Event.objects.get().identities == {"device": ENDPOINT}


def test_a_token_too_long_for_an_identity_is_stored_as_a_device_only(app_client):
    endpoint = "https://push.example.com/" + "y" * 300
    response = app_client.post(
        URL,
        {
            "type": "webpush",
            "registration_id": endpoint,
            "p256dh": "B" * 87,
            "auth": "a" * 22,
            "anonymous_id": "visitor-2",
        },
        format="json",
    )
    assert response.status_code == 201
    assert WebPushDevice.objects.get().registration_id == endpoint
    assert Event.objects.get().identities == {}  # the visitor is still recorded


def test_deactivate(app_client):
    app_client.post(URL, {"type": "fcm", "registration_id": FCM_TOKEN}, format="json")
    response = app_client.post(
        DEACTIVATE, {"type": "fcm", "registration_id": FCM_TOKEN}, format="json"
    )
    assert response.status_code == 200 and response.json() == {"deactivated": 1}
    assert GCMDevice.objects.get().active is False
    response = app_client.post(
        DEACTIVATE, {"type": "apns", "registration_id": FCM_TOKEN}, format="json"
    )
    assert response.status_code == 404


def test_registering_with_active_false_deactivates_without_an_event(app_client):
    app_client.post(URL, {"type": "fcm", "registration_id": FCM_TOKEN}, format="json")
    response = app_client.post(
        URL, {"type": "fcm", "registration_id": FCM_TOKEN, "active": False}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["event_id"] is None and response.json()["active"] is False
    assert GCMDevice.objects.get().active is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "type"),
        ({"type": "wns", "registration_id": "x"}, "type"),
        ({"type": "fcm"}, "registration_id"),
        ({"type": "fcm", "registration_id": ""}, "registration_id"),
        ({"type": "apns", "registration_id": "not hex"}, "registration_id"),
        ({"type": "apns", "registration_id": "ab" * 101}, "registration_id"),
        ({"type": "fcm", "registration_id": "t", "device_id": "0xZZ"}, "device_id"),
        ({"type": "fcm", "registration_id": "t", "device_id": "0x" + "f" * 17}, "device_id"),
        ({"type": "apns", "registration_id": "ab", "device_id": "nope"}, "device_id"),
        ({"type": "fcm", "registration_id": "t", "p256dh": "x"}, "p256dh"),
        ({"type": "webpush", "registration_id": "https://e/x"}, "p256dh"),
        ({"type": "webpush", "registration_id": "https://e/x", "device_id": "1"}, "device_id"),
        ({"type": "fcm", "registration_id": "t", "user_id": 99999}, "user_id"),
        ({"type": "fcm", "registration_id": "t", "application_id": "a" * 65}, "application_id"),
        ({"type": "fcm", "registration_id": "t", "extra": 1}, "extra"),
    ],
)
def test_bad_devices_name_the_field(app_client, body, field):
    response = app_client.post(URL, body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert not Event.objects.exists()
    assert not GCMDevice.objects.exists() and not APNSDevice.objects.exists()
