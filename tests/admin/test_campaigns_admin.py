"""The campaign and enrollment admin: the cascade editor, activation, preview and test send.

Driven through the test client as a superuser, with the real email and SMS channels in outbox
mode (what the demo shop runs) and the real engine's ``explain``. Time is fixed on a Monday
noon (UTC), outside the quiet hours, with time-machine.
"""

from __future__ import annotations

import html
import re
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from omnichannel.campaigns.groups import is_held_out, pick_variant
from omnichannel.campaigns.models import (
    Campaign,
    CampaignKind,
    CampaignStatus,
    Enrollment,
    EnrollmentAction,
    EnrollmentLog,
    EnrollmentState,
    ExitReason,
    Step,
    Variant,
)
from omnichannel.channels.models import Message, MessageStatus, OutboxEntry
from omnichannel.profiles.consents import record_consent
from omnichannel.profiles.models import CustomerProfile, Identity, IdentityKind, Purpose
from omnichannel.segments.models import Segment

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 16, 12, 0, tzinfo=dt_timezone.utc)
CHANGELIST = reverse("admin:omnichannel_campaign_changelist")
ADD = reverse("admin:omnichannel_campaign_add")
ENROLLMENTS = reverse("admin:omnichannel_enrollment_changelist")

CHANNELS = {
    "email": {
        "BACKEND": "omnichannel.channels.email.EmailChannel",
        "COST": "0.0008",
        "OPTIONS": {"OUTBOX": True, "FROM_EMAIL": "Demo shop <shop@example.com>"},
    },
    "sms": {
        "BACKEND": "omnichannel.channels.sms.SmsChannel",
        "COST": "0.04",
        "OPTIONS": {"OUTBOX": True, "FROM": "OmniDemo"},
    },
}

EMAIL_CONTENT = {
    "email": {
        "subject.txt": "{{ first_name }}, a word from {{ campaign.name }}",
        "body.txt": "Hello {{ first_name }}, step {{ step.position }}.",
        "body.html": "<p>Hello {{ first_name }}, step {{ step.position }}.</p>",
    }
}


@pytest.fixture(autouse=True)
def setup(settings):
    settings.OMNICHANNEL = {
        "DEFAULT_PHONE_REGION": "GB",
        "SITE_URL": "https://shop.example.com",
        "COST_CURRENCY": "GBP",
        "CHANNELS": CHANNELS,
    }
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw-12345")
    client.force_login(user)
    return client


def person(first_name: str, *, email: str | None = None, phone: str | None = None):
    profile = CustomerProfile.objects.create(first_name=first_name)
    if email:
        Identity.objects.create(profile=profile, kind=IdentityKind.EMAIL, value=email)
        record_consent(profile, channel="email", purpose=Purpose.MARKETING, granted=True, now=NOW)
    if phone:
        Identity.objects.create(profile=profile, kind=IdentityKind.PHONE, value=phone)
    return profile


@pytest.fixture
def ada() -> CustomerProfile:
    return person("Ada", email="ada@example.com")


@pytest.fixture
def nobody() -> CustomerProfile:
    """No address on any channel."""
    return person("Nemo")


def make_campaign(name: str = "Welcome", *, steps: int = 1, **fields: Any) -> Campaign:
    fields.setdefault("trigger", "welcome")
    campaign = Campaign.objects.create(name=name, **fields)
    channels = ["email", "sms", "email"]
    for position in range(1, steps + 1):
        Step.objects.create(
            campaign=campaign,
            position=position,
            channel=channels[position - 1],
            wait=timedelta(hours=position - 1),
            template="welcome",
            content=EMAIL_CONTENT,
        )
    return campaign


def page_text(response) -> str:
    """The page as words: tags dropped, entities decoded, white space collapsed."""
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", response.content.decode(), flags=re.S)
    text = re.sub(r"<[^>]+>", " ", text)
    text = html.unescape(text)
    return re.sub(r"\s+", " ", re.sub(r"\s+([:.,)])", r"\1", text))


def page_html(response) -> str:
    return response.content.decode()


def flash(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def form_data(**overrides: Any) -> dict[str, Any]:
    """A valid add form: a triggered welcome campaign with the given step rows."""
    data = {
        "name": "Welcome series",
        "kind": CampaignKind.TRIGGERED,
        "purpose": Purpose.MARKETING,
        "priority": "10",
        "trigger": "welcome",
        "trigger_options": '{"delay_minutes": 30}',
        "audience": "",
        "exclusion": "",
        "reenroll_after": "",
        "starts_at_0": "",
        "starts_at_1": "",
        "ends_at_0": "",
        "ends_at_1": "",
        "quiet_hours": "on",
        "cap_per_day": "",
        "cap_per_week": "",
        "when_capped": "delay",
        "send_at_0": "",
        "send_at_1": "",
        "holdout_percent": "0",
        "measure_window": "7d",
        "steps-TOTAL_FORMS": "0",
        "steps-INITIAL_FORMS": "0",
        "steps-MIN_NUM_FORMS": "0",
        "steps-MAX_NUM_FORMS": "1000",
    }
    data.update(overrides)
    return data


def with_steps(data: dict[str, Any], *rows: dict[str, Any]) -> dict[str, Any]:
    data["steps-TOTAL_FORMS"] = str(len(rows))
    for index, row in enumerate(rows):
        values = {
            "position": index + 1,
            "channel": "email",
            "wait": "0",
            "stop_if": "opened",
            "template": "welcome",
            "content": "{}",
            **row,
        }
        for key, value in values.items():
            if key == "best_hour":
                if value:
                    data[f"steps-{index}-best_hour"] = "on"
                continue
            data[f"steps-{index}-{key}"] = str(value)
    return data


def errors_of(response) -> str:
    """The text of every error list on the page."""
    found = re.findall(
        r'<ul class="errorlist[^"]*"[^>]*>(.*?)</ul>', response.content.decode(), re.S
    )
    return html.unescape(" ".join(re.sub(r"<[^>]+>", " ", part) for part in found))


# --- list ----------------------------------------------------------------------------------------


def test_changelist_shows_counts_in_a_fixed_number_of_queries(staff, ada, nobody):
    def add(name: str, *, enrolled: list[CustomerProfile], ended: int = 0) -> Campaign:
        campaign = make_campaign(name, status=CampaignStatus.ACTIVE)
        for index, profile in enumerate(enrolled):
            enrollment = Enrollment.objects.create(
                campaign=campaign,
                profile=profile,
                state=EnrollmentState.EXITED if index < ended else EnrollmentState.ACTIVE,
            )
            Message.objects.create(
                profile=profile,
                campaign=campaign,
                enrollment=enrollment,
                channel="email",
                purpose=Purpose.MARKETING,
                status=MessageStatus.SENT,
                sent_at=NOW,
            )
        return campaign

    basket = add("Basket reminder", enrolled=[ada, nobody], ended=1)
    with CaptureQueriesContext(connection) as one:
        response = staff.get(CHANGELIST)
    assert response.status_code == 200
    text = page_text(response)
    assert "Basket reminder" in text
    assert "1 / 2" in text  # active / total enrollments
    assert "Welcome" in text  # the trigger's label
    # The counts link to the campaign's enrollments and messages.
    enrollments = f"{ENROLLMENTS}?campaign__id__exact={basket.pk}"
    sent = f"{reverse('admin:omnichannel_message_changelist')}?campaign__id__exact={basket.pk}"
    assert enrollments in page_html(response)
    assert sent in page_html(response)
    assert staff.get(sent).status_code == 200  # a filter the message log knows (no ?e=1)

    for index in range(4):
        add(f"Campaign {index}", enrolled=[ada])
    with CaptureQueriesContext(connection) as five:
        response = staff.get(CHANGELIST)
    assert page_text(response).count("1 / 1") == 4
    assert len(five) == len(one), "one query for the page, not one per campaign"


def test_changelist_filters_and_search(staff):
    make_campaign("Welcome series")
    make_campaign("Basket reminder", trigger="abandoned_basket")
    segment = Segment.objects.create(name="Everyone", rules={"op": "all", "children": []})
    make_campaign("Spring sale", kind=CampaignKind.MASS, trigger="", audience=segment)

    by_trigger = page_text(staff.get(CHANGELIST, {"trigger": "abandoned_basket"}))
    assert "Basket reminder" in by_trigger
    assert "Welcome series" not in by_trigger

    mass = page_text(staff.get(CHANGELIST, {"kind__exact": "mass"}))
    assert "Spring sale" in mass
    assert "mass send" in mass
    assert "Basket reminder" not in mass

    found = page_text(staff.get(CHANGELIST, {"q": "spring"}))
    assert "Spring sale" in found
    assert "Welcome series" not in found


# --- add and change ---------------------------------------------------------------------------


def test_add_form_lists_triggers_channels_and_the_trigger_options(staff):
    response = staff.get(ADD)
    assert response.status_code == 200
    text = page_html(response)
    # The trigger is a select of the registry, with each trigger's options documented.
    assert '<option value="abandoned_basket">Abandoned basket</option>' in text
    assert "delay_minutes" in text
    assert "Minutes after the latest basket change." in text
    # Step rows: configured channels and "best".
    assert '<option value="sms">SMS</option>' in text
    assert '<option value="best">Best channel for the person</option>' in text
    assert "steps-1-position" in text  # two empty step rows on a new campaign


def test_add_a_campaign_with_two_steps(staff):
    data = with_steps(
        form_data(),
        {"channel": "email", "wait": "0"},
        {
            "channel": "sms",
            "wait": "1d 12h",
            "stop_if": "clicked",
            "best_hour": True,
            "content": '{"sms": {"body.txt": "Hi {{ first_name }}"}}',
        },
    )
    response = staff.post(ADD, data)
    assert response.status_code == 302, errors_of(response)
    campaign = Campaign.objects.get(name="Welcome series")
    assert campaign.status == CampaignStatus.DRAFT  # activated by the button, never by the form
    assert campaign.trigger_options == {"delay_minutes": 30}
    steps = list(campaign.steps.order_by("position"))
    assert [(s.channel, s.wait) for s in steps] == [
        ("email", timedelta(0)),
        ("sms", timedelta(days=1, hours=12)),
    ]
    assert steps[1].best_hour is True
    assert steps[1].content == {"sms": {"body.txt": "Hi {{ first_name }}"}}

    page = page_html(staff.get(reverse("admin:omnichannel_campaign_change", args=[campaign.pk])))
    assert 'value="1d 12h"' in page  # the wait is shown as it was typed


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"trigger": "carrier_pigeon"}, "Unknown trigger 'carrier_pigeon'; known:"),
        (
            {"trigger": "abandoned_basket", "trigger_options": '{"delay_minutes": "soon"}'},
            "delay_minutes: must be a whole number, not 'soon'",
        ),
        (
            {"trigger": "abandoned_basket", "trigger_options": '{"delay": 5}'},
            "delay: unknown option of abandoned_basket",
        ),
        ({"trigger_options": "{not json"}, "Enter a valid JSON."),
        ({"trigger": ""}, "A triggered campaign needs a trigger."),
        ({"kind": "mass", "trigger": ""}, "A mass campaign needs an audience segment."),
    ],
)
def test_campaign_errors_name_the_field(staff, overrides, expected):
    response = staff.post(ADD, with_steps(form_data(**overrides), {}))
    assert response.status_code == 200
    assert expected in errors_of(response)
    assert not Campaign.objects.exists()


def test_unknown_trigger_stays_visible_in_the_select(staff):
    campaign = make_campaign(trigger="retired_trigger")
    response = staff.get(reverse("admin:omnichannel_campaign_change", args=[campaign.pk]))
    assert '<option value="retired_trigger" selected>unknown: retired_trigger</option>' in (
        response.content.decode()
    )


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            {"channel": "carrier_pigeon"},
            "Unknown channel 'carrier_pigeon'; configured: email, sms, or best.",
        ),
        ({"wait": "soon"}, 'Enter a wait like "30m", "2h", "1d" or "1d 12h".'),
        ({"wait": "-1 00:00:00"}, "The wait cannot be negative."),
        (
            {"content": '{"sms": "text"}'},
            'Inline content must be {"<channel>": {"<part>": "<text>"}}.',
        ),
    ],
)
def test_step_errors_are_shown_on_the_row(staff, row, expected):
    response = staff.post(ADD, with_steps(form_data(), row))
    assert response.status_code == 200
    assert expected in errors_of(response)
    assert not Campaign.objects.exists()


def test_two_steps_at_one_position_are_refused(staff):
    response = staff.post(ADD, with_steps(form_data(), {"position": 1}, {"position": 1}))
    assert response.status_code == 200
    assert "duplicate" in errors_of(response).lower()


def test_change_steps_of_an_existing_campaign(staff):
    campaign = make_campaign(steps=2)
    first, second = campaign.steps.order_by("position")
    url = reverse("admin:omnichannel_campaign_change", args=[campaign.pk])
    page = staff.get(url)
    assert 'value="1h"' in page.content.decode()
    data = form_data(name=campaign.name, **{"steps-INITIAL_FORMS": "2"})
    with_steps(
        data,
        {"id": first.pk, "campaign": campaign.pk, "channel": "sms", "content": "{}"},
        {"id": second.pk, "campaign": campaign.pk, "position": 2, "wait": "45m", "content": "{}"},
    )
    response = staff.post(url, data)
    assert response.status_code == 302, errors_of(response)
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.channel == "sms"
    assert second.wait == timedelta(minutes=45)


def test_change_page_has_preview_enrollments_and_activate_buttons(staff):
    campaign = make_campaign()
    response = staff.get(reverse("admin:omnichannel_campaign_change", args=[campaign.pk]))
    text = response.content.decode()
    assert reverse("admin:omnichannel_campaign_preview", args=[campaign.pk]) in text
    assert f"{ENROLLMENTS}?campaign__id__exact={campaign.pk}" in text
    assert reverse("admin:omnichannel_campaign_activate", args=[campaign.pk]) in text
    assert '<datalist id="oc-campaign-templates">' in text
    assert '<option value="welcome">' in text  # template keys of the configured channels


# --- activation -----------------------------------------------------------------------------


def test_activate_and_pause_buttons(staff):
    campaign = make_campaign()
    activate = reverse("admin:omnichannel_campaign_activate", args=[campaign.pk])
    pause = reverse("admin:omnichannel_campaign_pause", args=[campaign.pk])

    assert staff.get(activate).status_code == 405  # a GET changes nothing
    response = staff.post(activate)
    assert response.status_code == 302
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.ACTIVE
    assert "Welcome is active" in flash(response)[0]

    page = staff.get(reverse("admin:omnichannel_campaign_change", args=[campaign.pk]))
    assert pause in page.content.decode()  # the button follows the status

    staff.post(pause)
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.PAUSED


def test_a_campaign_is_checked_before_it_goes_live(staff):
    cases = [
        (make_campaign("No steps", steps=0), "No steps was not activated: it has no steps"),
        (make_campaign("Bad trigger", trigger="gone"), "Unknown trigger 'gone'"),
    ]
    for campaign, expected in cases:
        response = staff.post(reverse("admin:omnichannel_campaign_activate", args=[campaign.pk]))
        assert any(expected in text for text in flash(response))
        campaign.refresh_from_db()
        assert campaign.status == CampaignStatus.DRAFT


def test_bulk_actions_activate_and_pause(staff):
    one, two = make_campaign("One"), make_campaign("Two")
    empty = make_campaign("Empty", steps=0)
    ids = [one.pk, two.pk, empty.pk]
    response = staff.post(CHANGELIST, {"action": "activate", "_selected_action": ids})
    assert response.status_code == 302
    statuses = dict(Campaign.objects.values_list("name", "status"))
    assert statuses == {"One": "active", "Two": "active", "Empty": "draft"}
    assert any("Empty was not activated: it has no steps" in m for m in flash(response))

    staff.post(CHANGELIST, {"action": "pause", "_selected_action": ids})
    statuses = dict(Campaign.objects.values_list("name", "status"))
    assert statuses == {"One": "paused", "Two": "paused", "Empty": "draft"}


# --- preview -----------------------------------------------------------------------------------


def preview_url(campaign: Campaign) -> str:
    return reverse("admin:omnichannel_campaign_preview", args=[campaign.pk])


def test_preview_for_a_reachable_person_shows_channel_reasons_and_message(staff, ada):
    campaign = make_campaign(steps=2, status=CampaignStatus.ACTIVE)
    response = staff.get(preview_url(campaign), {"profile": ada.pk})
    assert response.status_code == 200
    text = page_text(response)
    assert "Sends now: step 1 on email to ada@example.com." in text
    assert "not enrolled: as if enrolled now" in text
    assert "step 1: email (the step's channel)" in text
    # The message for that step and channel, rendered as the recipient sees it.
    assert "Step 1 on Email (nothing was stored or sent)" in text
    assert "Ada, a word from Welcome" in text
    assert "Hello Ada, step 1." in text
    assert "0.00080 GBP" in text
    assert not Message.objects.exists()
    assert not Enrollment.objects.exists()


def test_preview_of_another_step_and_channel(staff, ada):
    campaign = make_campaign(steps=2)
    second = campaign.steps.get(position=2)
    response = staff.post(
        preview_url(campaign),
        {"profile": ada.pk, "step": second.pk, "channel": "email", "_preview": "1"},
    )
    text = page_text(response)
    assert "Step 2 on Email (nothing was stored or sent)" in text
    assert "Hello Ada, step 2." in text
    assert "the campaign is draft" in text  # the decision says it would not run now


def test_preview_for_an_unreachable_person_says_why(staff, nobody):
    campaign = make_campaign(steps=2, status=CampaignStatus.ACTIVE)
    response = staff.get(preview_url(campaign), {"profile": nobody.pk})
    assert response.status_code == 200
    text = page_text(response)
    assert "Nothing is sent: the enrollment would end (No channel could reach the person)." in text
    assert "no step's channel could reach the person" in text
    assert "Steps skipped on the way" in text
    assert "no email address, device or chat for this person" in text
    assert "no sms address, device or chat for this person" in text
    # The first step's message is still shown, with why it cannot go.
    assert "Reachable: no: no email address" in text


def test_preview_for_an_enrolled_person_uses_their_enrollment(staff, ada):
    campaign = make_campaign(steps=2, status=CampaignStatus.ACTIVE)
    campaign.steps.filter(position=2).update(channel="email")
    enrollment = Enrollment.objects.create(
        campaign=campaign,
        profile=ada,
        step_position=1,
        next_due_at=NOW + timedelta(hours=3),
        last_message_at=NOW,
    )
    text = page_text(staff.get(preview_url(campaign), {"profile": ada.pk}))
    assert f"enrollment {enrollment.pk} (-)" in text
    assert "Hello Ada, step 2." in text  # the step waiting, not the first


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, "Choose a person to preview the campaign for."),
        ({"profile": "999999"}, "No customer profile with this id."),
        ({"profile": "abc"}, "No customer profile with this id."),
        (
            {"channel": "pigeon"},
            "Select a valid choice. pigeon is not one of the available choices.",
        ),
        ({"step": "999999"}, "Select a valid choice."),
    ],
)
def test_preview_bad_input_is_a_form_error(staff, ada, data, expected):
    campaign = make_campaign()
    data = {"profile": ada.pk, **data} if "profile" not in data and data else data
    for submit in ("_preview", "_send"):
        response = staff.post(preview_url(campaign), {**data, submit: "1"})
        assert response.status_code == 200
        assert expected in errors_of(response)
    assert not Message.objects.exists()


def test_preview_needs_change_permission(client, django_user_model):
    campaign = make_campaign()
    viewer = django_user_model.objects.create_user("viewer", password="pw-12345", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_campaign"))
    client.force_login(viewer)
    assert client.get(preview_url(campaign)).status_code == 403
    assert (
        client.post(reverse("admin:omnichannel_campaign_activate", args=[campaign.pk])).status_code
        == 403
    )
    assert (
        client.get(reverse("admin:omnichannel_campaign_preview", args=[999999])).status_code == 404
    )


# --- test send ---------------------------------------------------------------------------------


def test_send_test_sends_one_message_through_the_outbox(staff, ada):
    campaign = make_campaign(steps=2)
    response = staff.post(preview_url(campaign), {"profile": ada.pk, "_send": "1"})
    assert response.status_code == 302
    message = Message.objects.get()
    assert message.status == MessageStatus.SENT
    assert message.channel == "email"
    assert message.purpose == campaign.purpose
    assert message.address == "ada@example.com"
    assert message.subject == "Ada, a word from Welcome"
    assert "test" in message.tags
    assert message.campaign_id is None  # never counted in the campaign's figures
    entry = OutboxEntry.objects.get()
    assert entry.message_id == message.pk

    page = staff.get(response["Location"])
    text = page.content.decode()
    assert reverse("admin:omnichannel_message_change", args=[message.pk]) in text
    assert "Test message sent to ada@example.com" in html.unescape(text)
    assert "Sends now: step 1 on email" in page_text(page)  # back on the preview


def test_send_test_on_a_channel_that_cannot_reach_is_a_form_error(staff, ada, nobody):
    campaign = make_campaign()
    response = staff.post(
        preview_url(campaign), {"profile": nobody.pk, "channel": "email", "_send": "1"}
    )
    assert response.status_code == 200
    assert "Not sent: Email cannot reach this person: no email address" in errors_of(response)
    response = staff.post(
        preview_url(campaign), {"profile": ada.pk, "channel": "sms", "_send": "1"}
    )
    assert "Not sent: SMS cannot reach this person" in errors_of(response)
    assert not Message.objects.exists()


def test_send_test_of_a_best_channel_step_nobody_can_reach(staff, nobody):
    campaign = make_campaign(steps=0)
    Step.objects.create(campaign=campaign, position=1, channel="best", template="welcome")
    response = staff.post(preview_url(campaign), {"profile": nobody.pk, "_send": "1"})
    assert "sends on the best channel and none can reach this person now" in errors_of(response)

    empty = make_campaign("Empty", steps=0)
    response = staff.post(preview_url(empty), {"profile": nobody.pk, "_send": "1"})
    assert "This campaign has no steps" in errors_of(response)


def test_send_test_with_a_broken_template_is_an_error_not_a_500(staff, ada):
    campaign = make_campaign(steps=0)
    Step.objects.create(
        campaign=campaign,
        position=1,
        channel="email",
        template="",
        content={"email": {"subject.txt": "{% if %}"}},
    )
    response = staff.post(preview_url(campaign), {"profile": ada.pk, "_send": "1"})
    assert response.status_code == 200
    assert "Not sent: the message could not be rendered: TemplateSyntaxError" in errors_of(response)
    preview = staff.post(preview_url(campaign), {"profile": ada.pk, "_preview": "1"})
    assert "The template could not be rendered: TemplateSyntaxError" in page_text(preview)
    assert not Message.objects.exists()


# --- enrollments -------------------------------------------------------------------------------


@pytest.fixture
def enrollment(ada) -> Enrollment:
    campaign = make_campaign(steps=2, status=CampaignStatus.ACTIVE)
    first = campaign.steps.get(position=1)
    enrollment = Enrollment.objects.create(
        campaign=campaign,
        profile=ada,
        subject_key="order:7",
        context={"order_id": 7},
        step_position=1,
        next_due_at=NOW + timedelta(hours=1),
        enrolled_at=NOW - timedelta(minutes=5),
    )
    message = Message.objects.create(
        profile=ada,
        campaign=campaign,
        enrollment=enrollment,
        step=first,
        channel="email",
        purpose=Purpose.MARKETING,
        subject="Thanks for your order",
        status=MessageStatus.SENT,
        sent_at=NOW,
    )
    EnrollmentLog.objects.create(
        enrollment=enrollment, at=NOW - timedelta(minutes=5), action=EnrollmentAction.ENROLLED
    )
    EnrollmentLog.objects.create(
        enrollment=enrollment,
        at=NOW,
        action=EnrollmentAction.SENT,
        step=first,
        channel="email",
        message=message,
        detail="step 1: email (the step's channel)",
    )
    return enrollment


def test_enrollment_list_and_filters(staff, enrollment, nobody):
    other = make_campaign("Other")
    Enrollment.objects.create(
        campaign=other,
        profile=nobody,
        state=EnrollmentState.EXITED,
        exit_reason=ExitReason.UNREACHABLE,
    )
    text = page_text(staff.get(ENROLLMENTS))
    assert "order:7" in text
    assert "1 of 2" in text  # last step done of the campaign's steps
    assert reverse("admin:omnichannel_customerprofile_change", args=[enrollment.profile_id]) in (
        staff.get(ENROLLMENTS).content.decode()
    )
    mine = page_text(staff.get(ENROLLMENTS, {"campaign__id__exact": enrollment.campaign_id}))
    assert "order:7" in mine
    assert "Nemo" not in mine
    exited = page_text(staff.get(ENROLLMENTS, {"exit_reason__exact": "unreachable"}))
    assert "Nemo" in exited
    assert "order:7" not in exited
    assert "order:7" in page_text(staff.get(ENROLLMENTS, {"q": "ada@example.com"}))
    assert "order:7" not in page_text(staff.get(ENROLLMENTS, {"q": str(nobody.pk)}))


def test_enrollment_page_shows_history_and_messages_read_only(staff, enrollment):
    url = reverse("admin:omnichannel_enrollment_change", args=[enrollment.pk])
    response = staff.get(url)
    assert response.status_code == 200
    text, markup = page_text(response), page_html(response)
    message = Message.objects.get()
    assert "step 1: email (the step's channel)" in text  # the history
    assert "Message queued" in text
    assert reverse("admin:omnichannel_message_change", args=[message.pk]) in markup
    assert "Thanks for your order" in text  # its messages
    assert '"order_id": 7' in text
    assert "End now" in text
    assert f"{preview_url(enrollment.campaign)}?profile={enrollment.profile_id}" in markup
    assert 'name="_save"' not in markup  # read-only
    assert staff.get(reverse("admin:omnichannel_enrollment_add")).status_code == 403


def test_end_enrollments_now(staff, enrollment):
    response = staff.post(reverse("admin:omnichannel_enrollment_end", args=[enrollment.pk]))
    assert response.status_code == 302
    enrollment.refresh_from_db()
    assert enrollment.state == EnrollmentState.EXITED
    assert enrollment.next_due_at is None
    log = enrollment.log.order_by("-pk").first()
    assert log.action == EnrollmentAction.EXITED
    assert log.detail == "ended in the admin by boss"
    # Already ended: the bulk action ends nothing more.
    response = staff.post(ENROLLMENTS, {"action": "end_now", "_selected_action": [enrollment.pk]})
    assert "0 enrollments ended." in flash(response)


def test_end_now_leaves_an_enrollment_the_engine_is_working_on(staff, enrollment):
    Enrollment.objects.filter(pk=enrollment.pk).update(
        claimed_by="worker", claim_expires_at=NOW + timedelta(minutes=1)
    )
    response = staff.post(ENROLLMENTS, {"action": "end_now", "_selected_action": [enrollment.pk]})
    assert "0 enrollments ended." in flash(response)
    enrollment.refresh_from_db()
    assert enrollment.state == EnrollmentState.ACTIVE


# --- holdout and A/B variants ------------------------------------------------------------------


def step_url(step: Step) -> str:
    return reverse("admin:omnichannel_step_change", args=[step.pk])


def variant_rows(*rows: dict[str, Any], initial: int = 0) -> dict[str, Any]:
    """The step page's POST: its variant rows (the step's own fields are read-only)."""
    data: dict[str, Any] = {
        "variants-TOTAL_FORMS": str(len(rows)),
        "variants-INITIAL_FORMS": str(initial),
        "variants-MIN_NUM_FORMS": "0",
        "variants-MAX_NUM_FORMS": "1000",
    }
    for index, row in enumerate(rows):
        values = {"weight": "1", "channel": "", "subject": "", "content": "{}", **row}
        for key, value in values.items():
            data[f"variants-{index}-{key}"] = str(value)
        # The hidden initial value the page renders for content (its default is callable).
        data[f"initial-variants-{index}-content"] = "{}"
    return data


def test_holdout_and_conversion_window_are_edited_on_the_campaign(staff):
    response = staff.post(ADD, form_data(holdout_percent="20", measure_window="3d 12h"))
    assert response.status_code == 302, errors_of(response)
    campaign = Campaign.objects.get()
    assert (campaign.holdout_percent, campaign.measure_window) == (20, timedelta(days=3.5))
    page = page_text(staff.get(reverse("admin:omnichannel_campaign_change", args=[campaign.pk])))
    assert "Measurement: holdout and A/B variants" in page
    assert 'value="3d 12h"' in page_html(
        staff.get(reverse("admin:omnichannel_campaign_change", args=[campaign.pk]))
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"holdout_percent": "60"}, "Ensure this value is less than or equal to 50."),
        ({"holdout_percent": "-1"}, "Ensure this value is greater than or equal to 0."),
        ({"measure_window": "0"}, "The conversion window must be longer than 0."),
        ({"measure_window": "a week"}, 'Enter a window like "7d", "36h" or "1d 12h".'),
        ({"measure_window": ""}, "This field is required."),
    ],
)
def test_bad_measurement_fields_are_form_errors(staff, overrides, expected):
    response = staff.post(ADD, form_data(**overrides))
    assert response.status_code == 200
    assert expected in errors_of(response)
    assert not Campaign.objects.exists()


def test_each_step_row_links_to_its_variants(staff):
    campaign = make_campaign(steps=2)
    first = campaign.steps.get(position=1)
    Variant.objects.create(step=first, name="Short", weight=3)
    Variant.objects.create(step=first, name="Long", weight=1)
    response = staff.get(reverse("admin:omnichannel_campaign_change", args=[campaign.pk]))
    text = page_text(response)
    assert "Short 75 %, Long 25 % edit" in text
    assert "none edit" in text  # the second step has none
    assert step_url(first) in page_html(response)


def test_add_variants_on_the_step_page(staff):
    campaign = make_campaign()
    step = campaign.steps.get()
    page = staff.get(step_url(step))
    assert page.status_code == 200
    html_text = page_html(page)
    # Two empty rows to start with; the step's own fields are shown, not edited.
    assert 'name="variants-1-name"' in html_text and 'name="variants-2-name"' not in html_text
    assert 'name="channel"' not in html_text
    assert "A/B variants of step 1 of Welcome" in page_text(page)

    response = staff.post(
        step_url(step),
        variant_rows(
            {"name": "A"},
            {
                "name": "B",
                "weight": "3",
                "channel": "sms",
                "subject": "Last chance, {{ first_name }}",
                "content": '{"sms": {"body.txt": "Hi {{ first_name }}"}}',
            },
        ),
    )
    assert response.status_code == 302, errors_of(response)
    assert response["Location"] == reverse("admin:omnichannel_campaign_change", args=[campaign.pk])
    assert list(step.variants.values_list("name", "weight", "channel")) == [
        ("A", 1, ""),
        ("B", 3, "sms"),
    ]
    assert step.variants.get(name="B").content == {"sms": {"body.txt": "Hi {{ first_name }}"}}
    page = staff.get(step_url(step))
    assert "25 %" in page_text(page) and "75 %" in page_text(page)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"channel": "pigeon"}, "Unknown channel 'pigeon'; configured: email, sms"),
        ({"content": "[1, 2]"}, 'Inline content must be {"<channel>": {"<part>": "<text>"}}.'),
        ({"content": "{not json"}, "Enter a valid JSON."),
        ({"content": '{"fax": {"body.txt": "x"}}'}, "Unknown channel 'fax' in the content"),
        ({"content": '{"email": {"body.txt": "{% if %}"}}'}, "email / body.txt: Template error"),
        ({"subject": "{{ first_name|nope }}"}, "Template error: Invalid filter: 'nope'"),
        ({"weight": "0"}, "Ensure this value is greater than or equal to 1."),
        ({"name": "", "subject": "Hi"}, "This field is required."),
    ],
)
def test_variant_errors_are_shown_on_the_row(staff, row, expected):
    step = make_campaign().steps.get()
    response = staff.post(step_url(step), variant_rows({"name": "A", **row}))
    assert response.status_code == 200
    assert expected in errors_of(response)
    assert not Variant.objects.exists()


def test_two_variants_of_a_step_need_two_names(staff):
    step = make_campaign().steps.get()
    response = staff.post(step_url(step), variant_rows({"name": "A"}, {"name": "A"}))
    assert response.status_code == 200
    assert "Please correct the duplicate data for name" in errors_of(response)


def test_the_step_page_is_reached_from_campaigns_only(staff):
    make_campaign()
    index = page_html(staff.get(reverse("admin:index")))
    assert reverse("admin:omnichannel_step_changelist") not in index
    assert staff.get(reverse("admin:omnichannel_step_add")).status_code == 403


def test_a_broken_variant_keeps_the_campaign_from_going_live(staff):
    campaign = make_campaign()
    Variant.objects.create(step=campaign.steps.get(), name="Fax", channel="fax")
    response = staff.post(reverse("admin:omnichannel_campaign_activate", args=[campaign.pk]))
    assert any("step 1, variant Fax: Unknown channel 'fax'" in text for text in flash(response))
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.DRAFT


def ab_campaign(**fields: Any) -> tuple[Campaign, list[Variant]]:
    campaign = make_campaign(status=CampaignStatus.ACTIVE, **fields)
    step = campaign.steps.get()
    variants = [
        Variant.objects.create(step=step, name="Plain"),
        Variant.objects.create(
            step=step,
            name="Urgent",
            subject="Last chance, {{ first_name }}",
            content={"email": {"body.txt": "Only today, {{ first_name }}."}},
        ),
    ]
    return campaign, variants


def people_in(campaign: Campaign, count: int = 40) -> list[CustomerProfile]:
    return [person(f"P{index}", email=f"p{index}@example.com") for index in range(count)]


def test_preview_says_which_variant_the_person_gets_and_renders_it(staff):
    campaign, variants = ab_campaign()
    people = people_in(campaign)
    own = {p.pk: pick_variant(p.pk, campaign.pk, variants).name for p in people}
    plain = next(p for p in people if own[p.pk] == "Plain")
    urgent = next(p for p in people if own[p.pk] == "Urgent")

    text = page_text(staff.get(preview_url(campaign), {"profile": urgent.pk}))
    assert "A/B: this person gets variant Urgent of step 1 (Plain 50 %, Urgent 50 %)." in text
    assert f"Last chance, {urgent.first_name}" in text
    assert f"Only today, {urgent.first_name}." in text
    assert "Held out" not in text

    text = page_text(staff.get(preview_url(campaign), {"profile": plain.pk}))
    assert "this person gets variant Plain" in text
    assert f"{plain.first_name}, a word from Welcome" in text  # the step's own content

    # Staff can look at the other variant; the page says it is not the person's.
    text = page_text(
        staff.get(preview_url(campaign), {"profile": plain.pk, "variant": variants[1].pk})
    )
    assert "shown is variant Urgent of step 1; this person gets variant Plain" in text
    assert f"Last chance, {plain.first_name}" in text


def test_preview_says_when_the_person_is_held_out(staff):
    campaign, _variants = ab_campaign(holdout_percent=50)
    people = people_in(campaign, 10)
    held = next(p for p in people if is_held_out(p.pk, campaign))
    treated = next(p for p in people if not is_held_out(p.pk, campaign))
    text = page_text(staff.get(preview_url(campaign), {"profile": held.pk}))
    assert "Held out: this person is in the campaign's holdout (50 % of the people)" in text
    text = page_text(staff.get(preview_url(campaign), {"profile": treated.pk}))
    assert "Held out" not in text


def test_preview_of_a_variant_of_another_step_is_a_form_error(staff, ada):
    campaign = make_campaign(steps=2)
    first, second = campaign.steps.order_by("position")
    variant = Variant.objects.create(step=second, name="Other")
    response = staff.post(
        preview_url(campaign),
        {"profile": ada.pk, "step": first.pk, "variant": variant.pk, "_preview": "1"},
    )
    assert "Variant Other belongs to step 2, not this step." in errors_of(response)
    stranger = Variant.objects.create(step=make_campaign("Other").steps.get(), name="X")
    response = staff.post(
        preview_url(campaign), {"profile": ada.pk, "variant": stranger.pk, "_preview": "1"}
    )
    assert "Select a valid choice." in errors_of(response)
    # Choosing only the variant previews its step.
    response = staff.post(
        preview_url(campaign), {"profile": ada.pk, "variant": variant.pk, "_preview": "1"}
    )
    assert "Step 2 on" in page_text(response)


def test_send_test_sends_the_persons_variant(staff):
    campaign, variants = ab_campaign()
    people = people_in(campaign)
    urgent = next(p for p in people if pick_variant(p.pk, campaign.pk, variants).name == "Urgent")
    response = staff.post(preview_url(campaign), {"profile": urgent.pk, "_send": "1"})
    assert response.status_code == 302
    message = Message.objects.get()
    assert message.subject == f"Last chance, {urgent.first_name}"
    assert message.body_text == f"Only today, {urgent.first_name}."
    assert "variant:Urgent" in message.tags and "test" in message.tags


def test_a_variant_with_its_own_channel_is_previewed_on_it(staff):
    campaign = make_campaign(status=CampaignStatus.DRAFT)
    step = campaign.steps.get()
    sms = Variant.objects.create(
        step=step, name="SMS", channel="sms", content={"sms": {"body.txt": "Hi {{ first_name }}"}}
    )
    grace = person("Grace", phone="+447700900123")
    text = page_text(staff.get(preview_url(campaign), {"profile": grace.pk}))
    # Whatever the engine decides, the message shown is the variant's, on its channel.
    assert pick_variant(grace.pk, campaign.pk, [sms]) == sms
    assert "Step 1 on SMS (nothing was stored or sent)" in text
    assert "Hi Grace" in text


def test_empty_rows_save_no_variant(staff):
    step = make_campaign().steps.get()
    response = staff.post(step_url(step), variant_rows({"name": ""}, {"name": ""}))
    assert response.status_code == 302, errors_of(response)
    assert not Variant.objects.exists()
    assert "The variants of step 1 were saved." in flash(response)[0]


def test_send_test_to_a_held_out_person_needs_the_explicit_tick(staff):
    campaign, _variants = ab_campaign(holdout_percent=50)
    people = people_in(campaign, 10)
    held = next(p for p in people if is_held_out(p.pk, campaign))
    response = staff.post(preview_url(campaign), {"profile": held.pk, "_send": "1"})
    assert response.status_code == 200
    assert "Not sent: this person is in the campaign's holdout" in errors_of(response)
    assert 'name="send_held_out"' in response.content.decode()
    assert not Message.objects.exists()
    # Ticked on purpose: it goes, like any test send.
    response = staff.post(
        preview_url(campaign), {"profile": held.pk, "send_held_out": "on", "_send": "1"}
    )
    assert response.status_code == 302, errors_of(response)
    assert Message.objects.get().address == held.identities.get().value
    # Someone treated needs no tick.
    treated = next(p for p in people if not is_held_out(p.pk, campaign))
    assert (
        staff.post(preview_url(campaign), {"profile": treated.pk, "_send": "1"}).status_code == 302
    )


def test_send_test_refused_for_a_held_out_enrollment_after_the_share_changed(staff):
    campaign, _variants = ab_campaign(holdout_percent=50)
    held = next(p for p in people_in(campaign, 10) if is_held_out(p.pk, campaign))
    Enrollment.objects.create(campaign=campaign, profile=held, holdout=True, enrolled_at=NOW)
    campaign.holdout_percent = 0
    campaign.save()
    response = staff.post(preview_url(campaign), {"profile": held.pk, "_send": "1"})
    assert "Not sent: this person is in the campaign's holdout" in errors_of(response)
    assert not Message.objects.exists()


def test_step_page_queries_do_not_grow_with_the_variants(staff):
    def queries_for(variants: int) -> tuple[int, str]:
        step = make_campaign(f"Q{variants}").steps.get()
        for index in range(variants):
            Variant.objects.create(step=step, name=f"V{index}", weight=index + 1)
        staff.get(step_url(step))  # warm the content types' cache
        with CaptureQueriesContext(connection) as queries:
            response = staff.get(step_url(step))
        assert response.status_code == 200
        return len(queries), response.content.decode()

    two, page = queries_for(2)
    assert re.search(r"33 %.*67 %", page, re.S)  # weights 1 and 2
    six, page = queries_for(6)
    assert six == two
    assert "5 %" in page and "29 %" in page  # weights 1 and 6 of 21
