"""The shopper-facing tracking views through Django's test client: click, open pixel,
one-click unsubscribe (RFC 8058), preference centre and basket restore."""

from __future__ import annotations

import datetime as dt
from urllib.parse import parse_qs, urlsplit

import pytest
import time_machine
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from oscar.apps.partner.strategy import Default
from oscar.core.loading import get_model

from omnichannel.channels.base import BaseChannel
from omnichannel.channels.models import Message, MessageStatus, MessageStatusChange
from omnichannel.conf import app_settings
from omnichannel.profiles.consents import current_consents, record_consent
from omnichannel.profiles.merge import merge_profiles
from omnichannel.profiles.models import (
    Channel,
    Consent,
    ConsentSource,
    CustomerProfile,
    Purpose,
)
from omnichannel.tracking import links, tokens
from omnichannel.tracking.views import PIXEL_GIF
from tests import shop

pytestmark = pytest.mark.django_db

Basket = get_model("basket", "Basket")


# --- channels: the public extension point, one backend per consent channel --------------------
class _AnyAddressChannel(BaseChannel):
    """A channel that reaches everybody; these views never send, they only read consent."""

    template_folder = "email"

    def get_address(self, profile):
        return "somewhere"

    def send(self, message):  # pragma: no cover - nothing is sent here
        raise AssertionError("the tracking views never send")


class EmailTestChannel(_AnyAddressChannel):
    consent_channel = Channel.EMAIL


class SmsTestChannel(_AnyAddressChannel):
    consent_channel = Channel.SMS


class PushTestChannel(_AnyAddressChannel):
    consent_channel = Channel.PUSH


class WebPushTestChannel(_AnyAddressChannel):
    consent_channel = Channel.WEBPUSH


class MessengerTestChannel(_AnyAddressChannel):
    consent_channel = Channel.MESSENGER


HERE = "tests.tracking.test_views"
ALL_CHANNELS = {
    "email": {"BACKEND": f"{HERE}.EmailTestChannel"},
    # A second email channel (e.g. another ESP for bulk mail) shares the email consent.
    "bulk_email": {"BACKEND": f"{HERE}.EmailTestChannel"},
    "sms": {"BACKEND": f"{HERE}.SmsTestChannel"},
    "push": {"BACKEND": f"{HERE}.PushTestChannel"},
    "webpush": {"BACKEND": f"{HERE}.WebPushTestChannel"},
    "telegram": {"BACKEND": f"{HERE}.MessengerTestChannel"},
}
LANGUAGES = [("en-gb", "English"), ("de", "German"), ("fr", "French")]


def configure(settings, channels=None, **extra):
    settings.OMNICHANNEL = {**settings.OMNICHANNEL, "CHANNELS": channels or ALL_CHANNELS, **extra}


@pytest.fixture(autouse=True)
def _channels(settings):
    configure(settings)
    settings.LANGUAGES = LANGUAGES


@pytest.fixture
def profile():
    return CustomerProfile.objects.create(first_name="Ada", last_name="Lovelace")


def make_message(profile, channel="email", purpose=Purpose.MARKETING, **fields):
    now = timezone.now()
    return Message.objects.create(
        profile=profile,
        channel=channel,
        purpose=purpose,
        address="ada@example.com",
        status=MessageStatus.SENT,
        sent_at=now,
        language="en-gb",
        **fields,
    )


def path(url: str) -> str:
    """The path of an absolute link (links.* build them on SITE_URL)."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def tampered(url: str) -> str:
    """The link with one character of its signature changed."""
    token_path = path(url).rstrip("/")
    head, token = token_path.rsplit("/", 1)
    last = "A" if token[-1] != "A" else "B"
    return f"{head}/{token[:-1]}{last}/"


def later(seconds: int):
    return time_machine.travel(timezone.now() + dt.timedelta(seconds=seconds), tick=False)


def consent_rows(profile):
    return list(
        Consent.objects.filter(profile=profile)
        .order_by("pk")
        .values_list("channel", "purpose", "granted", "source")
    )


# --- click ------------------------------------------------------------------------------------


def test_click_records_clicked_and_redirects_to_the_signed_url(
    client, profile, django_assert_max_num_queries
):
    message = make_message(profile)
    url = links.click_url(message, "https://shop.example.com/catalogue/fridge_1/?utm_source=x")
    with django_assert_max_num_queries(6):  # find the row, then record_status's lock/update/insert
        response = client.get(path(url))
    assert response.status_code == 302
    assert response["Location"] == "https://shop.example.com/catalogue/fridge_1/?utm_source=x"
    assert response["Referrer-Policy"] == "same-origin"
    message.refresh_from_db()
    assert message.status == MessageStatus.CLICKED and message.clicked_at is not None
    change = message.history.get()
    assert (change.status, change.source) == (MessageStatus.CLICKED, "click-link")


def test_click_on_a_shop_path_and_an_app_deep_link(client, profile):
    message = make_message(profile, channel="push")
    token = tokens.make_token(tokens.CLICK, {"m": message.uuid.hex, "u": "myshop://product/1"})
    response = client.get(reverse("omnichannel:click", args=[token]))
    assert response.status_code == 302 and response["Location"] == "myshop://product/1"
    token = tokens.make_token(tokens.CLICK, {"m": message.uuid.hex, "u": "/basket/"})
    assert client.get(reverse("omnichannel:click", args=[token]))["Location"] == "/basket/"


@pytest.mark.parametrize("target", ["javascript:alert(1)", "data:text/html,hi", "//evil.example"])
def test_click_never_leads_to_script_or_another_host_without_scheme(client, profile, target):
    message = make_message(profile)
    token = tokens.make_token(tokens.CLICK, {"m": message.uuid.hex, "u": target})
    response = client.get(reverse("omnichannel:click", args=[token]))
    assert response.status_code == 400
    assert not MessageStatusChange.objects.exists()


def test_tampered_click_gets_the_broken_link_page_and_records_nothing(client, profile):
    message = make_message(profile)
    response = client.get(tampered(links.click_url(message, "https://shop.example.com/")))
    assert response.status_code == 400
    assert "Location" not in response
    body = response.content.decode()
    assert "This link does not work" in body and 'href="/"' in body
    assert not MessageStatusChange.objects.exists()


def test_a_token_of_another_kind_is_refused(client, profile):
    message = make_message(profile)
    open_token = path(links.open_pixel_url(message)).split("/")[-2]
    response = client.get(reverse("omnichannel:click", args=[open_token]))
    assert response.status_code == 400


def test_expired_click_link(client, profile):
    message = make_message(profile)
    url = links.click_url(message, "https://shop.example.com/")
    with later(app_settings.CLICK_LINK_MAX_AGE + 60):
        response = client.get(path(url))
    assert response.status_code == 400
    assert "This link has expired" in response.content.decode()
    assert not MessageStatusChange.objects.exists()


def test_click_on_a_deleted_message_still_redirects(client, profile):
    message = make_message(profile)
    url = links.click_url(message, "https://shop.example.com/sale/")
    message.delete()
    response = client.get(path(url))
    assert response.status_code == 302 and response["Location"] == "https://shop.example.com/sale/"


def test_head_request_of_a_link_checker_is_not_a_click(client, profile):
    message = make_message(profile)
    response = client.head(path(links.click_url(message, "https://shop.example.com/")))
    assert response.status_code == 302
    assert not MessageStatusChange.objects.exists()


# --- open pixel -------------------------------------------------------------------------------


def test_open_pixel_is_a_gif_that_records_opened(client, profile):
    message = make_message(profile)
    response = client.get(path(links.open_pixel_url(message)))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/gif"
    assert response.content == PIXEL_GIF and response.content.startswith(b"GIF89a")
    assert "no-cache" in response["Cache-Control"] and "no-store" in response["Cache-Control"]
    message.refresh_from_db()
    assert message.status == MessageStatus.OPENED
    assert message.history.get().source == "open-pixel"


def test_open_pixel_with_a_bad_token_is_still_an_image(client, profile):
    message = make_message(profile)
    token = path(links.open_pixel_url(message)).split("/")[-2]
    for bad in (token[:-1] + ("A" if token[-1] != "A" else "B"), "nonsense"):
        response = client.get(reverse("omnichannel:open", args=[bad]))
        assert response.status_code == 200 and response.content == PIXEL_GIF
    assert not MessageStatusChange.objects.exists()


# --- one-click unsubscribe --------------------------------------------------------------------


@pytest.fixture
def provider():
    """What a mail provider's RFC 8058 POST looks like: no cookie, CSRF checks enforced."""
    return Client(enforce_csrf_checks=True)


def test_get_unsubscribe_only_asks_and_changes_nothing(client, profile):
    message = make_message(profile)
    response = client.get(path(links.unsubscribe_url(message)))
    assert response.status_code == 200
    body = response.content.decode()
    assert "Unsubscribe from offers and news?" in body
    assert 'method="post"' in body and 'name="viewport"' in body
    assert not Consent.objects.exists()
    message.refresh_from_db()
    assert message.status == MessageStatus.SENT and message.unsubscribed_at is None
    assert not MessageStatusChange.objects.exists()


def test_one_click_post_withdraws_marketing_once_and_leaves_transactional(provider, profile):
    earlier = timezone.now() - dt.timedelta(days=30)
    for purpose in (Purpose.MARKETING, Purpose.TRANSACTIONAL):
        record_consent(
            profile, channel="email", purpose=purpose, granted=True, now=earlier, source="web"
        )
    message = make_message(profile)
    url = path(links.unsubscribe_url(message))

    response = provider.post(
        url, "List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 200
    assert not provider.cookies.get("csrftoken")
    body = response.content.decode()
    assert "You are unsubscribed" in body
    assert reverse("omnichannel:preferences", args=["x"]).rsplit("x/", 1)[0] in body

    assert consent_rows(profile)[2:] == [
        (Channel.EMAIL, Purpose.MARKETING, False, ConsentSource.UNSUBSCRIBE)
    ]
    latest = current_consents(profile)
    assert latest[(Channel.EMAIL, Purpose.TRANSACTIONAL)].granted is True
    message.refresh_from_db()
    assert message.status == MessageStatus.UNSUBSCRIBED and message.unsubscribed_at is not None

    # The person clicks too, and the provider retries with multipart: nothing more is written.
    again = provider.post(url, {"List-Unsubscribe": "One-Click"})  # multipart/form-data
    assert again.status_code == 200 and "You are unsubscribed" in again.content.decode()
    assert Consent.objects.filter(profile=profile).count() == 3
    assert message.history.filter(status=MessageStatus.UNSUBSCRIBED).count() == 1


def test_our_confirmation_form_posts_without_csrf_token(provider, profile):
    message = make_message(profile, channel="sms")
    url = path(links.unsubscribe_url(message))
    page = provider.get(url).content.decode()
    assert "csrfmiddlewaretoken" not in page
    response = provider.post(url, {"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    assert consent_rows(profile) == [
        (Channel.SMS, Purpose.MARKETING, False, ConsentSource.UNSUBSCRIBE)
    ]


def test_tampered_unsubscribe_changes_nothing(provider, profile):
    message = make_message(profile)
    url = tampered(links.unsubscribe_url(message))
    assert provider.get(url).status_code == 400
    response = provider.post(url, "List-Unsubscribe=One-Click", content_type="text/plain")
    assert response.status_code == 400
    assert "This link does not work" in response.content.decode()
    assert not Consent.objects.exists()
    assert not MessageStatusChange.objects.exists()


def test_unsubscribe_links_never_expire(provider, profile):
    message = make_message(profile)
    url = path(links.unsubscribe_url(message))
    with later(60 * 60 * 24 * 365 * 5):
        assert provider.post(url).status_code == 200
    assert consent_rows(profile) == [
        (Channel.EMAIL, Purpose.MARKETING, False, ConsentSource.UNSUBSCRIBE)
    ]


def test_unsubscribe_from_a_channel_no_longer_configured(settings, provider, profile):
    sms = make_message(profile, channel="sms")
    legacy = make_message(profile, channel="old_newsletter_tool")
    configure(settings, {"email": ALL_CHANNELS["email"]})
    # "sms" is still a consent channel: that one is withdrawn.
    assert provider.post(path(links.unsubscribe_url(sms))).status_code == 200
    assert consent_rows(profile) == [
        (Channel.SMS, Purpose.MARKETING, False, ConsentSource.UNSUBSCRIBE)
    ]
    # A name we cannot map: marketing stops everywhere rather than nowhere.
    assert provider.post(path(links.unsubscribe_url(legacy))).status_code == 200
    latest = current_consents(profile)
    assert {c for (c, p), consent in latest.items() if not consent.granted} == set(Channel.values)
    assert Consent.objects.filter(channel=Channel.SMS).count() == 1  # not withdrawn twice


def test_unsubscribe_after_the_message_was_deleted_and_the_profile_merged(provider):
    survivor = CustomerProfile.objects.create(first_name="Ada")
    profile = CustomerProfile.objects.create(first_name="Ada")  # younger: merged into survivor
    message = make_message(profile)
    url = path(links.unsubscribe_url(message))
    message.delete()
    assert merge_profiles(survivor, profile, reason="same email") == survivor
    assert not CustomerProfile.objects.filter(pk=profile.pk).exists()
    assert provider.post(url).status_code == 200
    assert {row[0] for row in consent_rows(survivor)} == set(Channel.values)
    assert {row[1:] for row in consent_rows(survivor)} == {
        (Purpose.MARKETING, False, ConsentSource.UNSUBSCRIBE)
    }


def test_unsubscribe_page_is_in_the_persons_language(client, profile):
    profile.language = "de"
    profile.save()
    response = client.get(path(links.unsubscribe_url(make_message(profile))))
    assert '<html lang="de"' in response.content.decode()


# --- preference centre ------------------------------------------------------------------------


def preferences_path(profile) -> str:
    return path(links.preferences_url(profile))


def form_data(response) -> dict[str, str]:
    """What the browser would post back from the page as rendered (all toggles as shown)."""
    form = response.context["form"]
    data = {"csrfmiddlewaretoken": response.context["csrf_token"]}
    data["shown"] = form["shown"].value()
    data["language"] = form["language"].value()
    for toggle in form.toggles:
        if form[toggle.field_name].value() and not toggle.locked:
            data[toggle.field_name] = "on"
    return data


@pytest.fixture
def browser_client():
    return Client(enforce_csrf_checks=True)


def test_preference_centre_shows_every_configured_consent_channel_once(browser_client, profile):
    response = browser_client.get(preferences_path(profile))
    assert response.status_code == 200
    assert "csrftoken" in response.cookies
    assert (
        response["Cache-Control"].startswith("max-age=0") or "no-cache" in response["Cache-Control"]
    )
    sections = response.context["sections"]
    assert [s["channel"] for s in sections] == ["email", "sms", "push", "webpush", "messenger"]
    body = response.content.decode()
    for label in ("Email", "SMS", "Mobile push", "Web push", "Messenger"):
        assert f"<legend>{label}</legend>" in body
    assert body.count("<legend>Email</legend>") == 1  # email and bulk_email share one consent
    assert "Receipts and order updates" in body and "Offers and news" in body
    assert 'role="switch"' in body and 'name="viewport"' in body
    assert "<script" not in body and "http://" not in body.split("<body>", 1)[1]
    # Default states: marketing off until granted, transactional on (TRANSACTIONAL_REQUIRES_CONSENT
    # is off), transactional email locked.
    form = response.context["form"]
    assert form["email__marketing"].value() is False
    assert form["sms__transactional"].value() is True
    assert form.fields["email__transactional"].disabled


def test_only_configured_channels_appear(settings, client, profile):
    configure(settings, {"email": ALL_CHANNELS["email"], "sms": ALL_CHANNELS["sms"]})
    body = client.get(preferences_path(profile)).content.decode()
    assert "<legend>SMS</legend>" in body
    assert "Web push" not in body and "Messenger" not in body


def test_a_channel_whose_backend_is_missing_falls_back_to_its_name(settings, client, profile):
    configure(
        settings,
        {
            "email": {"BACKEND": "nowhere.EmailChannel"},
            "fax": {"BACKEND": "nowhere.FaxChannel"},  # neither importable nor a consent channel
        },
    )
    response = client.get(preferences_path(profile))
    assert response.status_code == 200
    assert [s["channel"] for s in response.context["sections"]] == ["email"]


def test_saving_records_only_the_toggles_that_changed(browser_client, profile):
    earlier = timezone.now() - dt.timedelta(days=3)
    record_consent(profile, channel="sms", purpose="marketing", granted=True, now=earlier)
    url = preferences_path(profile)
    page = browser_client.get(url)
    data = form_data(page)
    assert data["sms__marketing"] == "on"
    data["email__marketing"] = "on"  # switched on
    del data["sms__marketing"]  # switched off
    del data["push__transactional"]  # no more order updates by mobile push

    response = browser_client.post(url, data)
    assert response.status_code == 302
    assert response["Location"] == urlsplit(url).path + "?saved=1"
    assert consent_rows(profile)[1:] == [
        (Channel.EMAIL, Purpose.MARKETING, True, ConsentSource.PREFERENCES),
        (Channel.SMS, Purpose.MARKETING, False, ConsentSource.PREFERENCES),
        (Channel.PUSH, Purpose.TRANSACTIONAL, False, ConsentSource.PREFERENCES),
    ]
    saved = browser_client.get(response["Location"])
    assert "Your preferences have been saved." in saved.content.decode()
    assert saved.context["form"]["push__transactional"].value() is False

    # Saving the same page again changes nothing and writes nothing.
    assert browser_client.post(url, form_data(saved)).status_code == 302
    assert Consent.objects.count() == 4


def test_locked_transactional_email_cannot_be_switched_off(browser_client, profile):
    url = preferences_path(profile)
    data = form_data(browser_client.get(url))
    data.pop("email__transactional", None)
    assert browser_client.post(url, data).status_code == 302
    data["email__transactional"] = ""  # a hand-made POST is ignored too: the field is disabled
    assert browser_client.post(url, data).status_code == 302
    assert not Consent.objects.exists()


def test_locked_channels_are_a_setting(settings, browser_client, profile):
    configure(settings, PREFERENCES_LOCKED_TRANSACTIONAL=[])
    url = preferences_path(profile)
    data = form_data(browser_client.get(url))
    del data["email__transactional"]
    browser_client.post(url, data)
    assert consent_rows(profile) == [
        (Channel.EMAIL, Purpose.TRANSACTIONAL, False, ConsentSource.PREFERENCES)
    ]


def test_a_channel_added_after_the_page_was_shown_is_not_switched_off(
    settings, browser_client, profile
):
    configure(settings, {"email": ALL_CHANNELS["email"]})
    url = preferences_path(profile)
    data = form_data(browser_client.get(url))
    configure(settings)  # sms, push, ... appear before the form comes back
    assert browser_client.post(url, data).status_code == 302
    assert not Consent.objects.exists()


def test_language_is_saved_and_the_page_follows_it(browser_client, profile):
    url = preferences_path(profile)
    page = browser_client.get(url)
    assert '<html lang="en-gb"' in page.content.decode()
    assert [c for c, _ in page.context["form"].fields["language"].choices] == ["en-gb", "de", "fr"]
    data = form_data(page)
    data["language"] = "de"
    response = browser_client.post(url, data)
    assert response.status_code == 302
    profile.refresh_from_db()
    assert profile.language == "de"
    assert not Consent.objects.exists()
    again = browser_client.get(response["Location"]).content.decode()
    assert '<html lang="de"' in again and '<option value="de" selected>Deutsch</option>' in again


def test_unknown_language_is_refused_and_nothing_changes(browser_client, profile):
    url = preferences_path(profile)
    data = form_data(browser_client.get(url))
    data["language"] = "xx"
    data["email__marketing"] = "on"
    response = browser_client.post(url, data)
    assert response.status_code == 400
    assert "Please check the form below." in response.content.decode()
    assert not Consent.objects.exists()
    profile.refresh_from_db()
    assert profile.language == ""


def test_preferences_post_without_csrf_token_is_refused(browser_client, profile):
    url = preferences_path(profile)
    data = form_data(browser_client.get(url))
    data["email__marketing"] = "on"
    del data["csrfmiddlewaretoken"]
    assert browser_client.post(url, data).status_code == 403
    assert not Consent.objects.exists()


def test_tampered_preferences_link(browser_client, profile):
    url = preferences_path(profile)
    data = form_data(browser_client.get(url))
    data["email__marketing"] = "on"
    bad = tampered(url)
    assert browser_client.get(bad).status_code == 400
    response = browser_client.post(bad, data)
    assert response.status_code == 400
    assert "This link does not work" in response.content.decode()
    assert not Consent.objects.exists()


def test_expired_preferences_link(browser_client, profile):
    url = preferences_path(profile)
    data = form_data(browser_client.get(url))
    data["language"] = "fr"
    with later(app_settings.PREFERENCES_LINK_MAX_AGE + 1):
        assert "This link has expired" in browser_client.get(url).content.decode()
        assert browser_client.post(url, data).status_code == 400
    profile.refresh_from_db()
    assert profile.language == ""


def test_preferences_link_of_a_merged_profile_opens_the_survivors(client, profile):
    newer = CustomerProfile.objects.create(first_name="Ada")
    url = preferences_path(newer)
    assert merge_profiles(profile, newer, reason="same phone") == profile  # the older survives
    response = client.get(url)
    assert response.status_code == 200 and response.context["profile"] == profile


def test_preferences_of_an_erased_profile(client, profile):
    url = preferences_path(profile)
    profile.delete()
    assert client.get(url).status_code == 400


# --- basket restore ---------------------------------------------------------------------------


@pytest.fixture
def fridge():
    return shop.create_product("499.00", title="Fridge Deluxe")


def anonymous_basket(product):
    """A basket filled by an anonymous visitor on another device, through the real shop."""
    phone = Client()
    shop.add_to_basket(phone, product)
    return Basket.objects.get(owner=None)


def owned_basket(owner, product):
    basket = Basket.objects.create(owner=owner)
    basket.strategy = Default()
    basket.add_product(product)
    return basket


def test_anonymous_basket_opens_on_another_device(client, fridge):
    basket = anonymous_basket(fridge)
    response = client.get(path(links.basket_restore_url(basket.pk)))
    assert response.status_code == 302 and response["Location"] == reverse("basket:summary")
    cookie = response.cookies["oscar_open_basket"]
    assert cookie["httponly"] and cookie.value.startswith(f"{basket.pk}:")
    page = client.get(reverse("basket:summary"))
    assert "Fridge Deluxe" in page.content.decode()
    assert page.context["basket"].pk == basket.pk


def test_owned_basket_opens_for_its_owner(client, fridge, django_user_model):
    owner = django_user_model.objects.create_user("ada", "ada@example.com", "pw-123456")
    laptop = Client()
    laptop.force_login(owner)
    shop.add_to_basket(laptop, fridge)
    basket = Basket.objects.get(owner=owner)
    client.force_login(owner)
    response = client.get(path(links.basket_restore_url(basket.pk)))
    assert response.status_code == 302 and response["Location"] == reverse("basket:summary")
    assert "oscar_open_basket" not in response.cookies
    assert "Fridge Deluxe" in client.get(reverse("basket:summary")).content.decode()


def test_owned_basket_asks_anybody_else_to_log_in(client, fridge, django_user_model):
    owner = django_user_model.objects.create_user("ada", "ada@example.com", "pw-123456")
    intruder = django_user_model.objects.create_user("eve", "eve@example.com", "pw-123456")
    basket = owned_basket(owner, fridge)
    url = path(links.basket_restore_url(basket.pk))

    client.force_login(intruder)
    response = client.get(url)
    assert response.status_code == 302
    location = urlsplit(response["Location"])
    assert location.path == reverse("customer:login")
    assert parse_qs(location.query)["next"] == [url]
    assert "oscar_open_basket" not in response.cookies
    assert "Fridge Deluxe" not in client.get(reverse("basket:summary")).content.decode()
    assert Basket.objects.get(pk=basket.pk).owner == owner


def test_owned_basket_anonymous_visitor_logs_in_and_comes_back(client, fridge, django_user_model):
    owner = django_user_model.objects.create_user("ada", "ada@example.com", "pw-123456")
    basket = owned_basket(owner, fridge)
    url = path(links.basket_restore_url(basket.pk))
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("customer:login") + "?next=")
    assert "_auth_user_id" not in client.session  # a link never logs anybody in

    form = client.get(response["Location"]).context["login_form"]
    assert form["redirect_url"].value() == url
    login = client.post(
        response["Location"],
        {
            "login-username": "ada@example.com",
            "login-password": "pw-123456",
            "login-redirect_url": form["redirect_url"].value(),
            "login_submit": "1",
        },
    )
    assert login.status_code == 302 and login["Location"] == url
    back = client.get(url)
    assert back["Location"] == reverse("basket:summary")
    assert "Fridge Deluxe" in client.get(back["Location"]).content.decode()


@pytest.mark.parametrize("status", ["Submitted", "Merged", "Frozen", "Saved"])
def test_a_basket_that_is_not_open_any_more(client, fridge, status):
    basket = anonymous_basket(fridge)
    Basket.objects.filter(pk=basket.pk).update(status=status)
    response = client.get(path(links.basket_restore_url(basket.pk)))
    assert response.status_code == 200
    assert "This basket is no longer available" in response.content.decode()
    assert "oscar_open_basket" not in response.cookies


def test_a_deleted_basket(client, fridge):
    basket = anonymous_basket(fridge)
    url = path(links.basket_restore_url(basket.pk))
    basket.delete()
    response = client.get(url)
    assert response.status_code == 200
    assert "This basket is no longer available" in response.content.decode()


def test_tampered_and_expired_basket_links(client, fridge):
    basket = anonymous_basket(fridge)
    url = links.basket_restore_url(basket.pk)
    response = client.get(tampered(url))
    assert response.status_code == 400 and "oscar_open_basket" not in response.cookies
    with later(app_settings.BASKET_LINK_MAX_AGE + 1):
        response = client.get(path(url))
    assert response.status_code == 400 and "This link has expired" in response.content.decode()
    assert "oscar_open_basket" not in response.cookies


def test_basket_link_of_a_message_records_a_click(client, fridge, profile):
    basket = anonymous_basket(fridge)
    message = make_message(profile, template="abandoned_basket")
    token = tokens.make_token(tokens.BASKET, {"b": basket.pk, "p": None, "m": message.uuid.hex})
    response = client.get(reverse("omnichannel:basket-restore", args=[token]))
    assert response.status_code == 302
    message.refresh_from_db()
    assert message.clicked_at is not None
    assert message.history.get().source == "basket-link"


def test_a_basket_link_from_a_message_records_the_click(client, fridge):
    basket = anonymous_basket(fridge)
    message = make_message(CustomerProfile.objects.create())
    response = client.get(path(links.basket_restore_url(basket.pk, message=message)))
    assert response.status_code == 302
    message.refresh_from_db()
    assert message.clicked_at is not None
