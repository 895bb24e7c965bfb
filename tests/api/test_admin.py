"""The API key admin: the secret is shown once, only its hash is kept, keys can be revoked."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from omnichannel.api.models import ApiKey, Scope, hash_secret

pytestmark = pytest.mark.django_db

ADD = reverse("admin:omnichannel_apikey_add")
LIST = reverse("admin:omnichannel_apikey_changelist")
EVENTS = reverse("omnichannel-api:events")
BATCH = {"events": [{"client_id": "1", "type": "app_opened", "anonymous_id": "i"}]}


def test_a_key_made_in_the_admin_is_shown_once_and_works(admin_client):
    response = admin_client.post(
        ADD,
        {"name": "iOS app", "source": "app", "scopes": ["events", "identify"], "rate_limit": ""},
        follow=True,
    )
    assert response.status_code == 200
    messages = [str(m) for m in response.context["messages"]]
    (shown,) = [m for m in messages if "copy it now" in m]
    raw = re.search(r"is: (\S+) —", shown).group(1)
    key = ApiKey.objects.get()
    prefix, secret = raw.split(".")
    assert key.prefix == prefix and key.secret_hash == hash_secret(secret)
    assert key.scopes == [Scope.EVENTS, Scope.IDENTIFY]
    # Not on any later page.
    page = admin_client.get(reverse("admin:omnichannel_apikey_change", args=[key.pk]))
    assert secret not in page.content.decode()
    listing = admin_client.get(LIST).content.decode()
    assert prefix in listing and secret not in listing and "events, identify" in listing

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    assert client.post(EVENTS, BATCH, format="json").status_code == 201
    listing = admin_client.get(LIST).content.decode()
    assert "last used" in listing.lower()


def test_editing_a_key_keeps_its_secret(admin_client, app_client):
    key = app_client.key
    url = reverse("admin:omnichannel_apikey_change", args=[key.pk])
    response = admin_client.post(
        url, {"name": "renamed", "scopes": ["events"], "rate_limit": "10/min"}, follow=True
    )
    assert response.status_code == 200
    key.refresh_from_db()
    assert (key.name, key.scopes, key.rate_limit, key.source) == (
        "renamed",
        ["events"],
        "10/min",
        "app",
    )
    assert app_client.post(EVENTS, BATCH, format="json").status_code == 201


def test_a_bad_rate_limit_is_refused_in_the_form(admin_client):
    response = admin_client.post(
        ADD, {"name": "x", "source": "app", "scopes": ["events"], "rate_limit": "lots"}
    )
    assert response.status_code == 200
    assert "is not a rate" in response.content.decode()
    assert not ApiKey.objects.exists()


def test_revoke_action(admin_client, app_client):
    key = app_client.key
    response = admin_client.post(
        LIST, {"action": "revoke", "_selected_action": [key.pk]}, follow=True
    )
    assert "1 key revoked." in response.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert app_client.post(EVENTS, BATCH, format="json").status_code == 401
    assert "revoked" in admin_client.get(LIST).content.decode()
