"""The events' fast path agrees with DRF's full validation on every input it accepts."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework import serializers

from omnichannel.api.serializers import EventSerializer

pytestmark = pytest.mark.django_db

odd_text = st.one_of(
    st.text(max_size=70),
    st.sampled_from(["", " ", "a\x00b", "\ud800", "x" * 65, "é" * 64]),
)
odd = st.one_of(odd_text, st.none(), st.integers(), st.booleans(), st.lists(st.integers()))
word = st.from_regex(r"\A[a-z0-9_-]{1,20}\Z")


def mostly(valid, invalid=odd):
    """Valid values nine times in ten: enough plain events for the fast path to matter."""
    return st.integers(min_value=0, max_value=9).flatmap(lambda i: invalid if i == 9 else valid)


identities = st.fixed_dictionaries(
    {},
    optional={
        "email": mostly(
            st.sampled_from(["ann@example.com", " Ann@Example.COM "]),
            st.one_of(odd, st.just("not-an-email")),
        ),
        "phone": mostly(
            st.sampled_from(["07911 123456", "+447911123456"]), st.one_of(odd, st.just("+1"))
        ),
        "loyalty_card": mostly(st.sampled_from(["card 7", "AB12"]), odd),
        "device": mostly(word, st.one_of(odd, st.just("x" * 256))),
    },
)
events = st.fixed_dictionaries(
    {
        "client_id": mostly(st.one_of(word, st.sampled_from([" padded ", "x" * 64]))),
        "type": mostly(word, st.one_of(odd, st.sampled_from(["order_placed", "bad slug"]))),
    },
    optional={
        "anonymous_id": mostly(word),
        "sku": mostly(word),
        "product_id": mostly(st.integers(min_value=1, max_value=2**31 - 1), st.integers()),
        "identities": mostly(identities, st.one_of(odd, st.just({"fax": "1"}))),
        "occurred_at": mostly(
            st.sampled_from(["2026-01-01T10:00:00Z", "2026-01-01T10:00:00", "2026-01-01"]),
            st.one_of(odd, st.sampled_from(["1999-01-01T00:00:00Z", "2999-01-01T00:00:00Z"])),
        ),
        "payload": mostly(
            st.dictionaries(word, st.one_of(st.integers(), word, st.text()), max_size=3),
        ),
    },
)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(data=events)
def test_the_fast_path_gives_what_drf_gives_or_steps_aside(data):
    """Whatever the fast path accepts, DRF accepts with the same result (it may step aside
    for valid events too: DRF then decides)."""
    serializer = EventSerializer()
    fast = serializer._plain_event(data)
    try:
        full = serializers.Serializer.to_internal_value(serializer, data)
    except serializers.ValidationError:
        full = None
    else:
        # What StrictSerializer adds on top: unknown fields are errors.
        if set(data) - set(serializer.fields):
            full = None
    if fast is not None:
        assert full is not None, data
        assert fast == dict(full), (fast, full)


@settings(max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(n=st.integers(min_value=0, max_value=1000))
def test_plain_events_take_the_fast_path(n):
    event = {
        "client_id": f"e-{n}",
        "type": "product_viewed",
        "anonymous_id": f"install-{n}",
        "identities": {"email": f"u{n}@example.com"},
        "sku": "SKU-1",
        "occurred_at": "2026-01-01T10:00:00Z",
        "payload": {"n": n},
    }
    assert EventSerializer()._plain_event(event) is not None
