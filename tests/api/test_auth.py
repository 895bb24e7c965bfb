"""API keys: 401 without a valid one, 403 outside its scopes, 429 over its rate limit."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from omnichannel.api.models import ApiKey, Scope, hash_secret
from omnichannel.api.throttling import parse_rate
from omnichannel.profiles.models import Event

pytestmark = pytest.mark.django_db

URL = reverse("omnichannel-api:events")
BATCH = {"events": [{"client_id": "a", "type": "app_opened", "anonymous_id": "i-1"}]}


def test_no_key_is_401_with_the_scheme_to_use():
    response = APIClient().post(URL, BATCH, format="json")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Api-Key"
    assert not Event.objects.exists()


@pytest.mark.parametrize(
    "header",
    [
        "Api-Key",
        "Api-Key nodot",
        "Api-Key a.b.c",
        "Api-Key one two",
        "Api-Key " + "x" * 40 + ".secret",
        "Bearer abc",  # another scheme: no credentials for us, 401 from the permission
        "Api-Key \xe9\xe9.\xe9",
    ],
)
def test_malformed_or_unknown_keys_are_401(header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.post(URL, BATCH, format="json")
    assert response.status_code == 401
    assert "detail" in response.json()


def test_a_wrong_secret_for_a_real_prefix_is_401(app_client):
    key = app_client.key
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key.prefix}.not-the-secret")
    response = client.post(URL, BATCH, format="json")
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid or revoked API key."


def test_a_revoked_key_is_401(app_client):
    assert app_client.post(URL, BATCH, format="json").status_code == 201
    app_client.key.revoke(now=timezone.now())
    response = app_client.post(URL, BATCH, format="json")
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid or revoked API key."


def test_only_a_hash_of_the_secret_is_stored(app_client):
    prefix, secret = app_client.raw_key.split(".")
    key = ApiKey.objects.get(prefix=prefix)
    assert key.secret_hash == hash_secret(secret) and secret not in key.secret_hash
    assert len(secret) >= 40  # 256 random bits
    assert key.check_secret(secret) and not key.check_secret(secret + "x")


@pytest.mark.parametrize(
    ("scope", "url", "body"),
    [
        (Scope.EVENTS, "omnichannel-api:events", BATCH),
        (Scope.IDENTIFY, "omnichannel-api:identify", {}),
        (Scope.DEVICES, "omnichannel-api:devices", {}),
        (Scope.DEVICES, "omnichannel-api:devices-deactivate", {}),
        (Scope.CONSENTS, "omnichannel-api:consents", {}),
        (Scope.ORDERS, "omnichannel-api:offline-orders", {}),
    ],
)
def test_each_endpoint_needs_its_scope(make_client, scope, url, body):
    others = [s for s in Scope.values if s != scope]
    response = make_client(scopes=others).post(reverse(url), body, format="json")
    assert response.status_code == 403
    assert scope in response.json()["detail"]
    # With the scope, the same (empty) body gets past authorization to validation.
    response = make_client(scopes=[scope]).post(reverse(url), body, format="json")
    assert response.status_code in (201, 400)


def test_last_used_is_recorded_at_most_once_a_minute(app_client):
    key = app_client.key
    assert key.last_used_at is None
    app_client.post(URL, BATCH, format="json")
    key.refresh_from_db()
    first = key.last_used_at
    assert first is not None
    app_client.post(URL, BATCH, format="json")
    key.refresh_from_db()
    assert key.last_used_at == first
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=first - timedelta(minutes=2))
    app_client.post(URL, BATCH, format="json")
    key.refresh_from_db()
    assert key.last_used_at > first


def test_a_keys_own_rate_limit_gives_429_with_retry_after(make_client):
    limited = make_client(rate_limit="3/min")
    other = make_client(rate_limit="3/min")
    codes = [limited.post(URL, BATCH, format="json").status_code for _ in range(4)]
    assert codes == [201, 200, 200, 429]
    response = limited.post(URL, BATCH, format="json")
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 61
    assert "throttled" in response.json()["detail"].lower()
    # Counted per key: another key is not affected.
    assert other.post(URL, BATCH, format="json").status_code == 201


@override_settings(OMNICHANNEL={"API_RATE_LIMIT": "2/hour"})
def test_the_default_rate_limit_comes_from_settings(make_client):
    client = make_client()
    codes = [client.post(URL, BATCH, format="json").status_code for _ in range(3)]
    assert codes == [201, 200, 429]


@override_settings(OMNICHANNEL={"API_RATE_LIMIT": None})
def test_no_default_rate_limit(make_client):
    client = make_client()
    assert {client.post(URL, BATCH, format="json").status_code for _ in range(5)} == {201, 200}


@pytest.mark.parametrize(
    ("rate", "parsed"),
    [("600/min", (600, 60)), ("20/second", (20, 1)), ("5/h", (5, 3600)), ("1/day", (1, 86400))],
)
def test_rates(rate, parsed):
    assert parse_rate(rate) == parsed


@pytest.mark.parametrize("rate", ["", "600", "x/min", "0/min", "5/fortnight", "1/2/3"])
def test_bad_rates(rate):
    with pytest.raises(ValueError, match="rate"):
        parse_rate(rate)
