"""The message admin, the outbox, suppressions, throttles and the preview / test send page.

Driven through the test client as a superuser, with the real email channel in outbox mode
(what the demo shop runs) and two small channels of this module that fail on purpose.
"""

from __future__ import annotations

import html
import re
from datetime import timedelta
from typing import Any, ClassVar
from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from omnichannel.channels.base import BaseChannel
from omnichannel.channels.models import (
    ChannelThrottle,
    Message,
    MessageStatus,
    MessageStatusChange,
    OutboxEntry,
    Suppression,
    SuppressionReason,
)
from omnichannel.channels.sending import deliver_message, queue_message
from omnichannel.channels.status import record_status
from omnichannel.exceptions import PermanentChannelError
from omnichannel.profiles.consents import record_consent
from omnichannel.profiles.models import CustomerProfile, Identity, IdentityKind, Purpose
from sandbox.settings import OMNICHANNEL as DEMO_OMNICHANNEL

pytestmark = pytest.mark.django_db

MESSAGES = reverse("admin:omnichannel_message_changelist")
PREVIEW = reverse("admin:omnichannel_message_preview")
OUTBOX = reverse("admin:omnichannel_outboxentry_changelist")
OUTBOX_CLEAR = reverse("admin:omnichannel_outboxentry_clear")
SUPPRESSIONS = reverse("admin:omnichannel_suppression_changelist")
THROTTLES = reverse("admin:omnichannel_channelthrottle_changelist")

FROM_EMAIL = "Demo shop <shop@example.com>"


class RefusingChannel(BaseChannel):
    """Email-like; its provider refuses every message (a permanent 4xx)."""

    consent_channel: ClassVar[str] = "email"
    template_folder: ClassVar[str] = "email"
    template_parts: ClassVar[dict[str, bool]] = {
        "subject.txt": True,
        "body.html": False,
        "body.txt": False,
    }

    def get_address(self, profile: Any) -> str | None:
        return (
            Identity.objects.filter(profile=profile, kind=IdentityKind.EMAIL)
            .values_list("value", flat=True)
            .first()
        )

    def send(self, message: Any) -> str:
        raise PermanentChannelError("550 mailbox unavailable")


class CrashingChannel(RefusingChannel):
    """A channel with a bug: its reachability check itself raises."""

    def get_address(self, profile: Any) -> str | None:
        raise RuntimeError("bug in get_address")


CHANNELS = {
    "email": {
        "BACKEND": "omnichannel.channels.email.EmailChannel",
        "COST": "0.0008",
        "OPTIONS": {"OUTBOX": True, "FROM_EMAIL": FROM_EMAIL},
    },
    "refusing": {
        "BACKEND": "tests.admin.test_messages_admin.RefusingChannel",
        "COST": "0.01",
    },
    "crashing": {"BACKEND": "tests.admin.test_messages_admin.CrashingChannel"},
}


@pytest.fixture(autouse=True)
def channels(settings):
    settings.OMNICHANNEL = {
        "DEFAULT_PHONE_REGION": "GB",
        "SITE_URL": "https://shop.example.com",
        "COST_CURRENCY": "GBP",
        "CHANNELS": CHANNELS,
    }


@pytest.fixture
def ada() -> CustomerProfile:
    profile = CustomerProfile.objects.create(first_name="Ada", last_name="Lovelace")
    Identity.objects.create(profile=profile, kind=IdentityKind.EMAIL, value="ada@example.com")
    return profile


@pytest.fixture
def bob() -> CustomerProfile:
    profile = CustomerProfile.objects.create(first_name="Bob")
    Identity.objects.create(profile=profile, kind=IdentityKind.EMAIL, value="bob@example.com")
    return profile


def send(profile: CustomerProfile, channel: str = "email", **kwargs: Any) -> Message:
    now = kwargs.pop("now", None) or timezone.now()
    kwargs.setdefault("purpose", Purpose.TRANSACTIONAL)
    kwargs.setdefault("template", "test")
    message = queue_message(profile, channel=channel, now=now, **kwargs)
    return deliver_message(message, now=now)


def change_url(obj: Any) -> str:
    return reverse(f"admin:omnichannel_{obj._meta.model_name}_change", args=[obj.pk])


def notices(response) -> list[tuple[str, str]]:
    return [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]


def srcdoc(content: str) -> str:
    """The unescaped srcdoc of the first sandboxed iframe in a page."""
    match = re.search(r'<iframe[^>]*\bsandbox=""[^>]*\bsrcdoc="([^"]*)"', content)
    assert match, "no sandboxed iframe with a srcdoc"
    return html.unescape(match.group(1))


def form_data(who: CustomerProfile | int | str, **overrides: Any) -> dict[str, Any]:
    data = {
        "profile": who.pk if isinstance(who, CustomerProfile) else who,
        "channel": "email",
        "purpose": Purpose.TRANSACTIONAL,
        "template": "test",
        "context": "",
        "_preview": "Preview",
    }
    data.update(overrides)
    return data


# --- message log ------------------------------------------------------------------------------


def test_changelist_lists_filters_and_searches(admin_client, ada, bob):
    sent = send(ada)
    refused = send(bob, "refusing")
    old = send(bob, template="welcome", now=timezone.now() - timedelta(days=40))
    assert (sent.status, refused.status, old.status) == ("sent", "failed", "sent")

    response = admin_client.get(MESSAGES)
    assert response.status_code == 200
    page = response.content.decode()
    for address in ("ada@example.com", "bob@example.com"):
        assert address in page
    assert "Test message from" in page
    assert 'class="oc-status oc-status-failed"' in page
    assert "0.00080 GBP" in page  # the email channel's cost, with the currency
    assert reverse("admin:omnichannel_message_preview") in page  # object tools link

    def listed(**params: str) -> set[int]:
        result = admin_client.get(MESSAGES, params)
        assert result.status_code == 200, params
        return {m.pk for m in result.context["cl"].result_list}

    assert listed(channel="refusing") == {refused.pk}
    assert listed(status="sent") == {sent.pk, old.pk}
    assert listed(status="failed", channel="email") == set()
    assert listed(purpose="marketing") == set()
    since = (timezone.now() - timedelta(days=7)).isoformat()
    assert listed(created_at__gte=since) == {sent.pk, refused.pk}
    year = str(old.created_at.year)
    assert old.pk in listed(created_at__year=year)
    assert listed(profile=str(ada.pk)) == {sent.pk}

    assert listed(q="ADA@example") == {sent.pk}
    assert listed(q=str(refused.uuid)) == {refused.pk}
    assert listed(q=sent.provider_message_id) == {sent.pk}
    assert listed(q="test MESSAGE") == {sent.pk, refused.pk}
    assert listed(q="welcome") == {old.pk}
    assert listed(q="no-such-thing") == set()


def test_message_page_shows_escaped_html_in_a_sandbox_and_the_history(admin_client, ada):
    body = '<p class="x">Fish &amp; chips</p><script>alert("owned")</script>'
    record_consent(
        ada, channel="email", purpose=Purpose.MARKETING, granted=True, now=timezone.now()
    )
    message = send(
        ada,
        purpose=Purpose.MARKETING,
        inline={"subject.txt": "Hello <Ada>", "body.html": body},
    )
    record_status(message, MessageStatus.DELIVERED, at=timezone.now(), source="postmark")
    entry = OutboxEntry.objects.get(message=message)

    response = admin_client.get(change_url(message))
    assert response.status_code == 200
    page = response.content.decode()
    # The email's HTML only inside the sandboxed iframe's srcdoc, escaped.
    assert "<script>alert" not in page
    assert '<p class="x">' not in page
    document = srcdoc(page)
    assert '<p class="x"' in document
    assert "Fish &amp; chips" in document
    assert "Hello &lt;Ada&gt;" in page  # the subject header, escaped
    assert "<Ada>" not in page
    assert FROM_EMAIL.replace("<", "&lt;").replace(">", "&gt;") in page
    assert "List-Unsubscribe" in page
    # The status history, oldest first, and the links to the profile and outbox entry.
    history = [row.status for row in response.context["inline_admin_formsets"][0].formset.queryset]
    assert history == ["queued", "sent", "delivered"]
    assert page.count('class="oc-status oc-status-delivered"') >= 2  # status and history
    assert change_url(ada) in page
    assert change_url(entry) in page
    assert 'name="_save"' not in page  # a record: viewed, not edited


def test_messages_are_read_only_and_only_superusers_delete(
    client, admin_client, ada, django_user_model
):
    message = send(ada)
    assert admin_client.get(reverse("admin:omnichannel_message_add")).status_code == 403
    response = admin_client.post(change_url(message), {"address": "evil@example.com"})
    assert response.status_code == 403
    message.refresh_from_db()
    assert message.address == "ada@example.com"

    clerk = django_user_model.objects.create_user("clerk", password="pw-clerk-1", is_staff=True)
    clerk.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="omnichannel",
            codename__in=["view_message", "delete_message"],
        )
    )
    client.force_login(clerk)
    assert client.get(change_url(message)).status_code == 200
    delete = reverse("admin:omnichannel_message_delete", args=[message.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 403
    assert Message.objects.filter(pk=message.pk).exists()
    assert admin_client.post(delete, {"post": "yes"}).status_code == 302
    assert not Message.objects.filter(pk=message.pk).exists()


# --- preview ----------------------------------------------------------------------------------


def test_preview_page_offers_channels_and_template_keys(admin_client, ada):
    response = admin_client.get(PREVIEW, {"profile": ada.pk, "channel": "email"})
    assert response.status_code == 200
    page = response.content.decode()
    form = response.context["form"]
    assert form.initial["profile"] == ada.pk
    assert [name for name, _label in form.fields["channel"].choices] == list(CHANNELS)
    keys = dict(response.context["template_keys"])["email"]
    assert {"test", "welcome", "abandoned_basket"} <= set(keys)
    assert "base" not in keys  # the layout, not a message
    assert '<datalist id="oc-templates-1" data-channel="email">' in page
    assert '<option value="welcome">' in page
    assert "csrfmiddlewaretoken" in page


def test_preview_renders_and_stores_nothing(admin_client, ada):
    counts = (Message.objects.count(), MessageStatusChange.objects.count())
    response = admin_client.post(PREVIEW, form_data(ada, context='{"coupon": "SPRING10"}'))
    assert response.status_code == 200
    assert (Message.objects.count(), MessageStatusChange.objects.count()) == counts
    assert OutboxEntry.objects.count() == 0
    preview = response.context["preview"]
    assert preview["error"] == ""
    assert preview["reach"].ok
    assert preview["reach"].address == "ada@example.com"
    page = response.content.decode()
    assert "Preview (nothing was stored or sent)" in page
    assert "Test message from" in page
    assert "0.00080 GBP" in page
    assert "Hello Ada," in srcdoc(page)
    assert "ada@example.com" in page


def test_a_typed_in_profile_that_is_not_an_id_is_a_form_error_not_a_500(admin_client, ada):
    data = {**form_data(ada), "profile": "ada@example.com"}
    response = admin_client.post(PREVIEW, data)
    assert response.status_code == 200
    assert "profile" in response.context["form"].errors


def test_preview_shows_why_a_person_cannot_be_reached(admin_client, ada):
    response = admin_client.post(PREVIEW, form_data(ada, purpose=Purpose.MARKETING))
    assert response.status_code == 200
    reach = response.context["preview"]["reach"]
    assert not reach.ok
    assert "marketing consent for email not given" in response.content.decode()
    assert reach.reason in response.content.decode()


def test_preview_of_a_missing_template_is_an_error_not_a_500(admin_client, ada):
    response = admin_client.post(PREVIEW, form_data(ada, template="no_such_template"))
    assert response.status_code == 200
    assert response.context["preview"]["content"] is None
    assert ("error", response.context["preview"]["error"]) in notices(response)
    assert "TemplateDoesNotExist" in response.context["preview"]["error"]


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("context", "{not json", "Not valid JSON"),
        ("context", "[1, 2]", "Enter a JSON object"),
        ("profile", "999999", "No customer profile with this id."),
        ("profile", "", "This field is required."),
        ("template", "../../admin/base", "letters, digits"),
        ("channel", "fax", "Select a valid choice"),
    ],
)
def test_bad_input_names_the_field(admin_client, ada, field, value, error):
    for button in ("_preview", "_send"):
        data = form_data(ada, **{field: value})
        if button == "_send":
            data.pop("_preview")
            data["_send"] = "Send test"
        response = admin_client.post(PREVIEW, data)
        assert response.status_code == 200
        form = response.context["form"]
        assert list(form.errors) == [field], form.errors
        assert error in " ".join(form.errors[field])
        assert error in html.unescape(response.content.decode())
    assert Message.objects.count() == 0


def test_preview_needs_staff_with_the_add_message_permission(client, ada, django_user_model):
    response = client.get(PREVIEW)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))

    shopper = django_user_model.objects.create_user("shopper", password="pw-shopper-1")
    client.force_login(shopper)
    response = client.post(PREVIEW, form_data(ada, _send="Send test"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    assert Message.objects.count() == 0

    clerk = django_user_model.objects.create_user("clerk", password="pw-clerk-1", is_staff=True)
    clerk.user_permissions.add(Permission.objects.get(codename="view_message"))
    client.force_login(clerk)
    assert client.get(PREVIEW).status_code == 403
    assert "Preview and test send" not in client.get(MESSAGES).content.decode()

    clerk.user_permissions.add(Permission.objects.get(codename="add_message"))
    clerk = django_user_model.objects.get(pk=clerk.pk)  # drop the permission cache
    client.force_login(clerk)
    assert client.get(PREVIEW).status_code == 200


def test_preview_post_needs_a_csrf_token(ada, django_user_model):
    from django.test import Client

    boss = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw-boss-1")
    client = Client(enforce_csrf_checks=True)
    client.force_login(boss)
    response = client.post(PREVIEW, form_data(ada, _send="Send test"))
    assert response.status_code == 403
    assert Message.objects.count() == 0


# --- test send --------------------------------------------------------------------------------


def test_send_test_email_lands_in_the_outbox(admin_client, ada):
    data = form_data(ada, context='{"coupon": "SPRING10"}')
    data.pop("_preview")
    data["_send"] = "Send test"
    response = admin_client.post(PREVIEW, data)

    message = Message.objects.get()
    assert response.status_code == 302
    assert response["Location"] == change_url(message)
    assert message.status == MessageStatus.SENT
    assert message.tags == ["test"]
    assert message.address == "ada@example.com"
    assert message.profile == ada
    entry = OutboxEntry.objects.get()
    assert entry.message == message
    [(level, text)] = notices(response)
    assert level == "success"
    assert "Test message sent to ada@example.com" in text
    assert change_url(entry) in text

    page = admin_client.get(change_url(message)).content.decode()
    assert "Hello Ada," in srcdoc(page)
    assert change_url(entry) in page

    listing = admin_client.get(OUTBOX, {"q": "ADA@"})
    assert [e.pk for e in listing.context["cl"].result_list] == [entry.pk]
    assert admin_client.get(OUTBOX, {"channel": "sms"}).context["cl"].result_count == 0

    outbox_page = admin_client.get(change_url(entry))
    assert outbox_page.status_code == 200
    page = outbox_page.content.decode()
    assert "Hello Ada," in srcdoc(page)
    for header in ("From", "To", "Subject"):
        assert f'<th scope="row">{header}</th>' in page
    assert "Test message from" in page
    assert '<pre class="oc-json">' in page  # the payload, pretty-printed
    assert "&quot;track_opens&quot;" in page
    assert change_url(message) in page
    assert 'name="_save"' not in page


def test_send_test_to_an_unreachable_person_shows_why(admin_client, ada):
    data = form_data(ada, purpose=Purpose.MARKETING, _send="Send test")
    data.pop("_preview")
    response = admin_client.post(PREVIEW, data)
    assert response.status_code == 200
    assert Message.objects.count() == 0
    [(level, text)] = notices(response)
    assert level == "error"
    assert "cannot be reached: marketing consent for email not given" in text

    record_consent(
        ada, channel="email", purpose=Purpose.MARKETING, granted=True, now=timezone.now()
    )
    response = admin_client.post(PREVIEW, data)
    assert response.status_code == 302
    assert Message.objects.get().purpose == Purpose.MARKETING


def test_a_refused_send_shows_the_providers_reason(admin_client, ada):
    data = form_data(ada, channel="refusing", _send="Send test")
    data.pop("_preview")
    response = admin_client.post(PREVIEW, data)
    message = Message.objects.get()
    assert response.status_code == 302
    assert response["Location"] == change_url(message)
    assert message.status == MessageStatus.FAILED
    [(level, text)] = notices(response)
    assert level == "error"
    assert "550 mailbox unavailable" in text
    page = admin_client.get(change_url(message)).content.decode()
    assert "550 mailbox unavailable" in page
    assert "None: the channel was not in outbox mode" in page


def test_a_crashing_channel_or_template_never_gives_a_500(admin_client, ada):
    data = form_data(ada, channel="crashing", _send="Send test")
    data.pop("_preview")
    response = admin_client.post(PREVIEW, data)
    assert response.status_code == 200
    assert "RuntimeError: bug in get_address" in notices(response)[0][1]

    response = admin_client.post(PREVIEW, form_data(ada, channel="crashing"))
    assert response.status_code == 200
    assert "bug in get_address" in response.content.decode()

    data = form_data(ada, template="no_such_template", _send="Send test")
    data.pop("_preview")
    response = admin_client.post(PREVIEW, data)
    assert response.status_code == 200
    assert "could not be rendered" in notices(response)[0][1]
    assert Message.objects.count() == 0


def test_a_paused_channel_queues_the_test_send(admin_client, ada):
    ChannelThrottle.objects.create(
        channel="email", paused_until=timezone.now() + timedelta(minutes=5), reason="429"
    )
    data = form_data(ada, _send="Send test")
    data.pop("_preview")
    response = admin_client.post(PREVIEW, data)
    message = Message.objects.get()
    assert response.status_code == 302
    assert message.status == MessageStatus.QUEUED
    [(level, text)] = notices(response)
    assert level == "warning"
    assert "the channel is paused until" in text


def test_a_broken_channel_setting_does_not_break_the_page(admin_client, settings, ada):
    settings.OMNICHANNEL = {
        **settings.OMNICHANNEL,
        "CHANNELS": {**CHANNELS, "fax": {"BACKEND": "no.such.FaxChannel"}},
    }
    response = admin_client.get(PREVIEW)
    assert response.status_code == 200
    assert "cannot import" in response.content.decode()
    assert "fax" not in dict(response.context["form"].fields["channel"].choices)
    assert admin_client.get(MESSAGES).status_code == 200


def test_profile_page_links_to_messages_and_the_test_send(admin_client, ada):
    page = admin_client.get(change_url(ada)).content.decode()
    assert f"{PREVIEW}?profile={ada.pk}" in page
    assert f"{MESSAGES}?profile={ada.pk}" in page
    # the link prefills the profile (the autocomplete shows who it is)
    response = admin_client.get(f"{PREVIEW}?profile={ada.pk}")
    assert "Ada Lovelace" in response.content.decode()


def test_profile_autocomplete_finds_profiles(admin_client, ada, bob):
    url = reverse("admin:autocomplete")
    params = {"app_label": "omnichannel", "model_name": "message", "field_name": "profile"}
    response = admin_client.get(f"{url}?{urlencode({**params, 'term': 'Ada'})}")
    assert response.status_code == 200
    assert [r["id"] for r in response.json()["results"]] == [str(ada.pk)]


# --- outbox -----------------------------------------------------------------------------------


def test_clear_outbox_asks_then_deletes_every_entry(admin_client, ada, bob):
    send(ada)
    send(bob)
    assert OutboxEntry.objects.count() == 2
    page = admin_client.get(OUTBOX).content.decode()
    assert OUTBOX_CLEAR in page
    confirm = admin_client.get(OUTBOX_CLEAR)
    assert confirm.status_code == 200
    assert OutboxEntry.objects.count() == 2  # a GET changes nothing
    assert "Delete all 2 entries" in confirm.content.decode()
    response = admin_client.post(OUTBOX_CLEAR)
    assert response.status_code == 302
    assert OutboxEntry.objects.count() == 0
    assert Message.objects.count() == 2  # the message log stays
    assert "2 entries deleted" in notices(response)[0][1]


def test_outbox_is_read_only(admin_client, ada):
    send(ada)
    entry = OutboxEntry.objects.get()
    assert admin_client.get(reverse("admin:omnichannel_outboxentry_add")).status_code == 403
    assert admin_client.post(change_url(entry), {"address": "x@example.com"}).status_code == 403


# --- suppressions and throttles ----------------------------------------------------------------


def test_staff_add_and_lift_a_suppression(admin_client, ada):
    add = reverse("admin:omnichannel_suppression_add")
    response = admin_client.post(
        add,
        {"channel": "email", "address": " ADA@Example.com ", "detail": "asked by phone"},
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    suppression = Suppression.objects.get()
    assert suppression.address == "ada@example.com"
    assert suppression.reason == SuppressionReason.MANUAL
    assert not suppression.transactional_too

    # The suppression blocks marketing: the preview says so.
    record_consent(
        ada, channel="email", purpose=Purpose.MARKETING, granted=True, now=timezone.now()
    )
    preview = admin_client.post(PREVIEW, form_data(ada, purpose=Purpose.MARKETING))
    assert "address suppressed: Added by staff" in preview.content.decode()

    again = admin_client.post(add, {"channel": "email", "address": "ada@example.com"})
    assert again.status_code == 200
    assert "already exists" in again.content.decode()
    bad = admin_client.post(add, {"channel": "email", "address": "not an email"})
    assert "not a valid email address" in html.unescape(bad.content.decode())

    listing = admin_client.get(SUPPRESSIONS, {"q": "ADA"})
    assert [s.pk for s in listing.context["cl"].result_list] == [suppression.pk]
    delete = reverse("admin:omnichannel_suppression_delete", args=[suppression.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 302
    assert not Suppression.objects.exists()


def test_resume_a_throttled_channel_now(admin_client, ada):
    now = timezone.now()
    until = now + timedelta(minutes=10)
    throttle = ChannelThrottle.objects.create(
        channel="email", paused_until=until, consecutive=3, reason="429 slow down"
    )
    message = queue_message(ada, channel="email", purpose="transactional", template="test", now=now)
    Message.objects.filter(pk=message.pk).update(
        next_attempt_at=until, error="rate limited: 429 slow down"
    )
    page = admin_client.get(THROTTLES).content.decode()
    assert "429 slow down" in page
    assert admin_client.get(change_url(throttle)).status_code == 200

    response = admin_client.post(
        THROTTLES, {"action": "resume_now", "_selected_action": [throttle.pk]}
    )
    assert response.status_code == 302
    throttle.refresh_from_db()
    message.refresh_from_db()
    assert throttle.paused_until <= timezone.now()
    assert throttle.consecutive == 0
    assert message.next_attempt_at <= timezone.now()
    assert "Resumed 1 channel." in notices(response)[0][1]


# --- every channel of the demo shop -------------------------------------------------------------


@pytest.fixture
def everywhere(django_user_model) -> CustomerProfile:
    """A customer as the demo data makes its first one: reachable on every channel."""
    from push_notifications.models import GCMDevice, WebPushDevice

    user = django_user_model.objects.create_user(
        "ada.everywhere", email="ada.everywhere@example.com", password="pw-ada-1"
    )
    profile = CustomerProfile.objects.create(user=user, first_name="Ada")
    Identity.objects.create(profile=profile, kind=IdentityKind.PHONE, value="+447911123456")
    Identity.objects.create(profile=profile, kind=IdentityKind.TELEGRAM, value="100000042")
    GCMDevice.objects.create(
        user=user, registration_id="demo-fcm-token-42", cloud_message_type="FCM", name="Android"
    )
    WebPushDevice.objects.create(
        user=user,
        registration_id="https://push.example.invalid/wpush/42",
        browser="CHROME",
        p256dh="BDemoKeyDemoKeyDemoKeyDemoKeyDemoKeyDemoKey",
        auth="demoauthsecret",
    )
    for channel in ("email", "sms", "push", "webpush", "messenger"):
        record_consent(
            profile, channel=channel, purpose=Purpose.MARKETING, granted=True, now=timezone.now()
        )
    return profile


@pytest.mark.parametrize("channel", ["email", "sms", "push", "webpush", "telegram"])
def test_preview_and_test_send_on_every_demo_channel(admin_client, settings, everywhere, channel):
    """The demo shop's own channel settings (all in outbox mode), the welcome template."""
    assert DEMO_OMNICHANNEL["CHANNELS"][channel]["OPTIONS"]["OUTBOX"] is True
    settings.OMNICHANNEL = {**DEMO_OMNICHANNEL, "SITE_URL": "https://shop.example.com"}
    data = form_data(everywhere, channel=channel, purpose=Purpose.MARKETING, template="welcome")

    preview = admin_client.post(PREVIEW, data)
    assert preview.status_code == 200
    assert preview.context["preview"]["error"] == ""
    assert preview.context["preview"]["reach"].ok
    assert Message.objects.count() == 0
    assert OutboxEntry.objects.count() == 0
    assert "Ada" in preview.content.decode()

    data.pop("_preview")
    data["_send"] = "Send test"
    response = admin_client.post(PREVIEW, data)
    message = Message.objects.get()
    assert response.status_code == 302, notices(response)
    assert message.status == MessageStatus.SENT, message.error
    entry = OutboxEntry.objects.get()
    assert notices(response)[0][0] == "success"

    page = admin_client.get(change_url(entry)).content.decode()
    message_page = admin_client.get(change_url(message)).content.decode()
    if channel == "email":
        assert "Welcome, Ada!" in srcdoc(page)
        assert "List-Unsubscribe" in page  # marketing: the one-click header
        assert entry.address == "ada.everywhere@example.com"
    elif channel == "sms":
        for shown in (page, message_page):
            assert 'class="oc-bubble oc-bubble-sms"' in shown
            assert "Reply STOP to opt out." in shown
            assert f'<dd class="oc-segments">{message.units} (GSM-7)' in shown
        assert entry.address == "+447911123456"
        assert "OmniDemo" in page  # the sender
    elif channel in ("push", "webpush"):
        for shown in (page, message_page):
            assert '<div class="oc-notification-title">Welcome to' in shown
            assert "Thanks for joining us." in shown
            assert "1 device" in shown
            assert "https://shop.example.com/" in shown
            assert 'class="oc-click-url"' in shown  # through our signed redirect
    else:
        for shown in (page, message_page):
            assert '<div class="oc-chat-text"><b>Welcome to' in shown
            assert (
                '<div class="oc-chat-button"><a href="https://shop.example.com/omnichannel/c/'
                in (shown)
            )
            assert "Visit the shop</a>" in shown
        assert entry.address == "100000042"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("<b>Hi</b> &amp; <i>bye</i>", "<b>Hi</b> &amp; <i>bye</i>"),
        ('<b onclick="steal()">x</b>', "<b>x</b>"),
        ("<script>alert(1)</script>", "alert(1)"),
        ('<a href="javascript:alert(1)">x</a>', "<a>x</a>"),
        (
            '<a href="https://shop.example.com/?a=1&b=2">go</a>',
            '<a href="https://shop.example.com/?a=1&amp;b=2" target="_blank" '
            'rel="noopener noreferrer">go</a>',
        ),
        ("<pre><code>x < y", "<pre><code>x &lt; y</code></pre>"),
        ("<b>open <i>both</b> after", "<b>open <i>both</i></b> after"),
        ("</div></td>1 < 2 <style>body{display:none}</style>", "1 &lt; 2 body{display:none}"),
        ("<tg-spoiler>secret</tg-spoiler>", '<span class="oc-spoiler">secret</span>'),
    ],
)
def test_telegram_formatting_is_rebuilt_safely(text, shown):
    from omnichannel.admin.messages import telegram_html

    assert telegram_html(text) == shown
