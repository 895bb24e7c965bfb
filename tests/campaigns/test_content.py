"""Campaign message content: item dicts, and engine-made messages rendered as they are sent.

Messages are built as the engine builds them (content-less rows with ``needs_render``) and go
through the real delivery path with the demo shop's outbox-mode channels, or through
``render_pending_messages`` when only the content matters.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from urllib.parse import urlparse

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from oscar.core.loading import get_model
from oscar.test import factories

from omnichannel.campaigns.content import (
    inline_parts,
    items_for,
    render_pending_messages,
    validate_variant,
)
from omnichannel.campaigns.models import Enrollment, EnrollmentState, ExitReason, Step, Variant
from omnichannel.channels.models import Message, MessageStatus, OutboxEntry
from omnichannel.channels.registry import get_channel
from omnichannel.channels.sending import deliver_due_messages
from omnichannel.profiles.consents import record_consent
from omnichannel.profiles.models import CustomerProfile, Event, EventType, Identity, IdentityKind
from omnichannel.segments.models import PurchasedProduct
from omnichannel.segments.purchases import refresh_purchased_products
from omnichannel.tracking import tokens
from tests.campaigns.conftest import NOW

pytestmark = pytest.mark.django_db

SITE = "https://shop.example.com"
WishList = get_model("wishlists", "WishList")
KEYS = [
    "abandoned_basket",
    "abandoned_wishlist",
    "post_purchase",
    "welcome",
    "win_back",
    "browse_abandonment",
]


@pytest.fixture(autouse=True)
def shop_settings(settings, tmp_path):
    """The demo shop's channels (all in outbox mode), links on a fixed domain, images on disk."""
    settings.OMNICHANNEL = {
        **django_settings.OMNICHANNEL,
        "SITE_URL": SITE,
        "FREQUENCY_CAPS": {},
        "RECOMMENDATIONS_LIMIT": 2,
    }
    settings.MEDIA_ROOT = tmp_path


@pytest.fixture
def catalogue():
    """A kettle with a picture, a mug, tea and a teapot; people bought tea and the teapot
    with kettles, so they are the kettle's recommendations."""
    kettle = factories.create_product(title="Blue kettle", price=Decimal("24.50"), num_in_stock=5)
    factories.ProductImageFactory(product=kettle)
    mug = factories.create_product(title="Mug", price=Decimal("6.00"), num_in_stock=5)
    tea = factories.create_product(title="Green tea", price=Decimal("4.25"), num_in_stock=5)
    teapot = factories.create_product(title="Teapot", price=Decimal("30.00"), num_in_stock=5)
    for basket in ([kettle, tea, teapot], [kettle, tea], [kettle, teapot], [mug, tea]):
        buyer = CustomerProfile.objects.create()
        Event.objects.create(
            profile=buyer,
            type=EventType.ORDER_PLACED,
            occurred_at=NOW - timedelta(days=20),
            payload={"lines": [{"product_id": p.pk} for p in basket]},
        )
    refresh_purchased_products()
    return {"kettle": kettle, "mug": mug, "tea": tea, "teapot": teapot}


def person(first_name="Ada", *, channels=("email", "sms", "messenger")) -> CustomerProfile:
    profile = CustomerProfile.objects.create(first_name=first_name)
    number = profile.pk
    Identity.objects.create(profile=profile, kind=IdentityKind.EMAIL, value=f"p{number}@x.com")
    Identity.objects.create(profile=profile, kind=IdentityKind.PHONE, value=f"+4477009{number:05d}")
    Identity.objects.create(profile=profile, kind=IdentityKind.TELEGRAM, value=str(9000 + number))
    for channel in channels:
        record_consent(
            profile, channel=channel, purpose="marketing", granted=True, now=NOW - timedelta(days=1)
        )
    return profile


def basket_of(*lines):
    basket = factories.create_basket(empty=True)
    for product, quantity in lines:
        basket.add_product(product, quantity=quantity)
    return basket


def engine_message(
    campaign,
    profile,
    *,
    channel="email",
    subject_key="",
    context=None,
    position=1,
    enrolled_at=NOW - timedelta(hours=2),
) -> Message:
    """An enrollment at its step and the content-less message the engine would create."""
    enrollment, _ = Enrollment.objects.get_or_create(
        campaign=campaign,
        profile=profile,
        subject_key=subject_key,
        defaults={"context": context or {}, "enrolled_at": enrolled_at},
    )
    step = Step.objects.get(campaign=campaign, position=position)
    return Message.objects.create(
        profile=profile,
        campaign=campaign,
        enrollment=enrollment,
        step=step,
        channel=channel,
        purpose=campaign.purpose,
        address=get_channel(channel).get_address(profile) or "",
        template=step.template,
        language=profile.language or django_settings.LANGUAGE_CODE,
        needs_render=True,
        status=MessageStatus.QUEUED,
        status_changed_at=NOW,
        created_at=NOW,
        queued_at=NOW,
        next_attempt_at=NOW,
    )


def basket_message(make_campaign, profile, basket, *, channel="email", campaign=None):
    campaign = campaign or make_campaign("abandoned_basket", [{"channel": channel}])
    return engine_message(
        campaign,
        profile,
        channel=channel,
        subject_key=f"basket:{basket.pk}",
        context={"basket_id": basket.pk},
    )


def rendered(messages, channel="email"):
    """Render like the delivery task (messages loaded as its claim loads them)."""
    fresh = list(
        Message.objects.filter(pk__in=[m.pk for m in messages])
        .select_related("profile")
        .order_by("id")
    )
    return render_pending_messages(get_channel(channel), fresh, now=NOW)


# --- item dicts ----------------------------------------------------------------------------------


def test_items_for_builds_prices_images_links_and_availability(catalogue):
    kettle, mug = catalogue["kettle"], catalogue["mug"]
    sold_out = factories.create_product(title="Sold out", price=Decimal("9.99"), num_in_stock=0)
    shirt = factories.create_product(title="Shirt", structure="parent")
    factories.create_product(title="", parent=shirt, price=Decimal("15.00"), num_in_stock=3)
    items = items_for([kettle.pk, mug.pk, sold_out.pk, shirt.pk, 987654], {str(kettle.pk): 2})
    by_title = {item["title"]: item for item in items}
    assert list(by_title) == ["Blue kettle", "Mug", "Sold out", "Shirt"]  # unknown id left out
    first = by_title["Blue kettle"]
    image = kettle.primary_image()
    assert first == {
        "product": kettle,
        "product_id": kettle.pk,
        "title": "Blue kettle",
        "url": f"{SITE}{kettle.get_absolute_url()}",
        "image_url": f"{SITE}{image.original.url}",
        "price": Decimal("24.50"),
        "currency": "GBP",
        "quantity": 2,
        "line_price": Decimal("49.00"),
        "available": True,
    }
    assert by_title["Mug"]["image_url"] == "" and by_title["Mug"]["quantity"] == 1
    assert by_title["Sold out"]["available"] is False
    # A parent is priced and available through its variants.
    assert by_title["Shirt"]["price"] == Decimal("15.00") and by_title["Shirt"]["available"]


def test_items_for_costs_the_same_queries_for_many_products(catalogue):
    products = [
        factories.create_product(title=f"P{n}", price=Decimal("1.00"), num_in_stock=1)
        for n in range(30)
    ]

    def queries(ids) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert len(items_for(ids)) == len(ids)
        return len(captured)

    assert queries([p.pk for p in products[:3]]) == queries([p.pk for p in products])


# --- rendering engine messages ---------------------------------------------------------------


def test_basket_email_shows_items_prices_restore_link_and_recommendations(
    client, make_campaign, catalogue
):
    kettle, mug, tea, teapot = (catalogue[k] for k in ("kettle", "mug", "tea", "teapot"))
    ada = person()
    basket = basket_of((kettle, 2), (mug, 1))
    message = basket_message(make_campaign, ada, basket)

    assert deliver_due_messages(now=NOW) == 1

    message.refresh_from_db()
    assert message.status == MessageStatus.SENT, message.error
    assert not message.needs_render
    assert (message.units, message.cost, message.currency) == (1, Decimal("0.0008"), "GBP")
    assert message.subject == "Ada, you left something in your basket"
    html, text = message.body_html, message.body_text
    # Item cards: picture (absolute), title, quantity, line price, and the basket's total.
    assert f'src="{SITE}{kettle.primary_image().original.url}"' in html
    assert "Blue kettle" in html and "2 \u00d7 £24.50" in html and "£49.00" in html
    assert "Mug" in html and "£6.00" in html
    assert "Total" in html and "£55.00" in html
    # The button reopens this basket on any device and records a click on this message.
    restore = html.split('class="button-a" href="', 1)[1].split('"', 1)[0]
    assert restore.startswith(f"{SITE}/omnichannel/basket/")
    payload = tokens.read_token(tokens.BASKET, restore.rstrip("/").rsplit("/", 1)[1])
    assert payload == {"b": basket.pk, "p": ada.uuid.hex, "m": message.uuid.hex}
    assert f"Back to my basket ({restore})" in text
    # Recommendations: bought with kettles and mugs, not in the basket, best first.
    recommendations = html.split("Goes well with your basket", 1)[1]
    assert recommendations.index("Green tea") < recommendations.index("Teapot")
    assert "£4.25" in recommendations
    assert "Blue kettle" not in recommendations
    # What the outbox (the demo's provider) received is what was rendered.
    assert OutboxEntry.objects.get(message=message).body_html == html

    response = client.get(urlparse(restore).path)
    assert response.status_code == 302 and response["Location"] == "/basket/"
    message.refresh_from_db()
    assert message.clicked_at is not None
    assert tea.pk and teapot.pk


def test_items_bought_since_enrolling_are_left_out(make_campaign, catalogue):
    kettle, mug = catalogue["kettle"], catalogue["mug"]
    ada = person()
    message = basket_message(make_campaign, ada, basket_of((kettle, 1), (mug, 1)))
    PurchasedProduct.objects.create(profile=ada, product=mug, orders_count=1, last_bought_at=NOW)

    [done] = rendered([message])

    assert "Blue kettle" in done.body_html
    assert "Mug" not in done.body_html.split("Goes well with", 1)[0]


def test_a_reminder_whose_items_were_all_bought_is_suppressed(make_campaign, catalogue):
    kettle = catalogue["kettle"]
    ada = person()
    message = basket_message(make_campaign, ada, basket_of((kettle, 1)))
    PurchasedProduct.objects.create(profile=ada, product=kettle, orders_count=1, last_bought_at=NOW)

    assert rendered([message]) == []

    message.refresh_from_db()
    assert message.status == MessageStatus.SUPPRESSED
    assert message.error == (
        f"nothing left to remind about: {ExitReason.BOUGHT_ITEMS.label} (bought_items)"
    )
    assert message.needs_render and not message.body_html


def test_a_message_of_an_exited_enrollment_is_suppressed(make_campaign, catalogue):
    ada = person()
    message = basket_message(make_campaign, ada, basket_of((catalogue["kettle"], 1)))
    Enrollment.objects.filter(pk=message.enrollment_id).update(
        state=EnrollmentState.EXITED, exit_reason=ExitReason.UNSUBSCRIBED
    )

    assert rendered([message]) == []

    message.refresh_from_db()
    assert message.status == MessageStatus.SUPPRESSED
    assert "ended before the message went: Unsubscribed or complained" in message.error


def test_a_template_error_fails_only_its_message(make_campaign, catalogue):
    kettle = catalogue["kettle"]
    good = basket_message(make_campaign, person("Ada"), basket_of((kettle, 1)))
    broken_campaign = make_campaign(
        "abandoned_basket",
        [{"content": {"email": {"subject.txt": "Hi {{ first_name|no_such_filter }}"}}}],
    )
    bad = basket_message(
        make_campaign, person("Bob"), basket_of((kettle, 1)), campaign=broken_campaign
    )

    assert deliver_due_messages(now=NOW) == 2

    good.refresh_from_db()
    bad.refresh_from_db()
    assert good.status == MessageStatus.SENT
    assert bad.status == MessageStatus.FAILED
    assert bad.error == (
        "could not render template 'abandoned_basket' for channel 'email': "
        "TemplateSyntaxError: Invalid filter: 'no_such_filter'"
    )
    assert not OutboxEntry.objects.filter(message=bad).exists()
    assert bad.claimed_by == "" and bad.lease_expires_at is None


def test_a_message_whose_step_was_deleted_fails_with_the_reason(make_campaign, catalogue):
    message = basket_message(make_campaign, person(), basket_of((catalogue["kettle"], 1)))
    Step.objects.filter(pk=message.step_id).delete()

    assert rendered([message]) == []

    message.refresh_from_db()
    assert message.status == MessageStatus.FAILED
    assert message.error == "its campaign step was deleted: nothing to render"


def test_inline_step_content_wins_over_the_template(make_campaign, catalogue):
    campaign = make_campaign(
        "abandoned_basket",
        [
            {
                "channel": "sms",
                "content": {
                    "sms": {
                        "body.txt": "{{ first_name }}: {{ item.title }} x{{ item.quantity }} "
                        "{% load omnichannel %}{% tracked_url restore_url %}"
                    }
                },
            }
        ],
    )
    ada = person()
    message = basket_message(
        make_campaign, ada, basket_of((catalogue["kettle"], 3)), channel="sms", campaign=campaign
    )

    [done] = rendered([message], channel="sms")

    assert done.body_text.startswith(f"Ada: Blue kettle x3 {SITE}/omnichannel/s/")
    assert done.data["links"][0].startswith(f"{SITE}/omnichannel/basket/")
    assert (done.units, done.cost) == (1, Decimal("0.04000"))


def subject_for(key, profile, catalogue):
    """The subject key and trigger context of an enrollment of ``key`` (as its trigger makes)."""
    kettle, mug = catalogue["kettle"], catalogue["mug"]
    if key == "abandoned_basket":
        basket = basket_of((kettle, 2), (mug, 1))
        return f"basket:{basket.pk}", {"basket_id": basket.pk}
    if key == "abandoned_wishlist":
        owner = get_user_model().objects.create_user(f"u{profile.pk}", password="x")
        wishlist = WishList.objects.create(owner=owner, name="Mine")
        wishlist.add(kettle)
        return f"wishlist:{wishlist.pk}", {"wishlist_id": wishlist.pk}
    if key == "post_purchase":
        items = {"items": [kettle.pk], "quantities": {str(kettle.pk): 1}}
        return "order:event-1", {"order_id": None, "number": "T-17", **items}
    if key == "browse_abandonment":
        return f"browse:{kettle.pk}", {"product_id": kettle.pk}
    return "", {}


@pytest.mark.parametrize("channel", ["email", "sms", "push", "webpush", "telegram"])
@pytest.mark.parametrize("key", KEYS)
def test_every_campaign_template_renders_on_every_channel(make_campaign, catalogue, key, channel):
    # A long first name: the texts must still fit in two SMS segments.
    profile = person("Alexandra")
    subject_key, context = subject_for(key, profile, catalogue)
    campaign = make_campaign(key, [{"channel": channel}])
    message = engine_message(
        campaign, profile, channel=channel, subject_key=subject_key, context=context
    )

    [done] = rendered([message], channel=channel)

    assert done.body_text, done.error
    assert "&#x27;" not in done.subject + done.body_text
    if channel == "email":
        assert done.subject and "<h1 " in done.body_html
        assert done.body_text.startswith("Omnichannel demo shop")
    if channel == "sms":
        assert done.units <= 2, done.body_text
        assert f"{SITE}/omnichannel/s/" in done.body_text
        assert done.body_text.endswith("Reply STOP to opt out.")
    if channel in ("push", "webpush"):
        assert done.subject and done.data["url"].startswith(f"{SITE}/omnichannel/c/")
    if channel == "telegram":
        assert done.body_text.startswith("<b>")
        assert done.data["button_text"] and done.data["button_url"].startswith(SITE)
    if key in ("abandoned_basket", "abandoned_wishlist", "browse_abandonment"):
        shown = done.subject + done.body_text + done.body_html
        if channel != "telegram" or key != "abandoned_basket":
            assert "Blue kettle" in shown, shown
    if key in ("post_purchase", "welcome", "win_back", "abandoned_basket") and channel == "email":
        assert "Green tea" in done.body_html  # a recommendation


def test_post_purchase_email_thanks_for_the_order_and_suggests_more(make_campaign, catalogue):
    ada = person()
    order = factories.create_order(basket=basket_of((catalogue["kettle"], 1)), number="100042")
    campaign = make_campaign("post_purchase")
    message = engine_message(
        campaign,
        ada,
        subject_key=f"order:{order.pk}",
        context={"order_id": order.pk, "items": [catalogue["kettle"].pk]},
    )

    [done] = rendered([message])

    assert done.subject == "Ada, thank you for your order"
    assert "We hope you enjoy your order 100042." in done.body_text
    tiles = done.body_html.split("Goes well with your order", 1)[1]
    assert "Green tea" in tiles and "Teapot" in tiles and "Blue kettle" not in tiles


def test_recommendations_skip_what_the_person_bought_and_what_is_out_of_stock(
    make_campaign, catalogue
):
    tea = catalogue["tea"]
    ada = person()
    PurchasedProduct.objects.create(
        profile=ada, product=catalogue["teapot"], orders_count=1, last_bought_at=NOW
    )
    stock = tea.stockrecords.get()
    stock.num_in_stock = 0
    stock.save()
    message = engine_message(make_campaign("win_back"), ada)

    [done] = rendered([message])

    tiles = done.body_html.split("Picked for you", 1)[1]
    assert "Teapot" not in tiles and "Green tea" not in tiles
    assert "Blue kettle" in tiles  # the shop's best seller


def test_a_batch_costs_the_same_queries_whatever_its_size(make_campaign, catalogue):
    kettle, mug, tea = catalogue["kettle"], catalogue["mug"], catalogue["tea"]
    campaign = make_campaign("abandoned_basket")
    products = [kettle, mug, tea]

    def batch(size: int) -> list[Message]:
        return [
            basket_message(
                make_campaign,
                person(f"P{n}"),
                basket_of((products[n % 3], 1), (products[(n + 1) % 3], 2)),
                campaign=campaign,
            )
            for n in range(size)
        ]

    def queries(messages) -> int:
        loaded = list(
            Message.objects.filter(pk__in=[m.pk for m in messages]).select_related("profile")
        )
        with CaptureQueriesContext(connection) as captured:
            done = render_pending_messages(get_channel("email"), loaded, now=NOW)
        assert len(done) == len(messages)
        return len(captured)

    small, large = queries(batch(10)), queries(batch(50))
    assert small == large <= 20, (small, large)
    assert not Message.objects.filter(needs_render=True).exists()


# --- A/B variants ------------------------------------------------------------------------------

STEP_CONTENT = {
    "email": {
        "subject.txt": "Step subject for {{ first_name }}",
        "body.txt": "Step text for {{ first_name }}",
        "body.html": "<p>Step html for {{ first_name }}</p>",
    },
    "push": {"title.txt": "Step title", "body.txt": "Step push"},
    "sms": {"body.txt": "Step sms"},
}


def test_a_variant_replaces_the_subject_and_its_own_parts(make_campaign):
    campaign = make_campaign("welcome", [{"content": STEP_CONTENT}])
    step = campaign.steps.get()
    variant = Variant.objects.create(
        step=step,
        name="B",
        subject="Variant {{ variant.name }} for {{ first_name }}",
        content={"email": {"body.txt": "Variant text for {{ first_name }}"}},
    )
    other = Variant.objects.create(step=step, name="A")
    ada, bob = person("Ada"), person("Bob")
    with_variant = engine_message(campaign, ada)
    Message.objects.filter(pk=with_variant.pk).update(variant=variant)
    plain = engine_message(campaign, bob)
    Message.objects.filter(pk=plain.pk).update(variant=other)

    done = {m.profile.first_name: m for m in rendered([with_variant, plain])}

    assert done["Ada"].subject == "Variant B for Ada"
    assert done["Ada"].body_text == "Variant text for Ada"
    assert "<p>Step html for Ada</p>" in done["Ada"].body_html  # the step's, not replaced
    # A variant without a subject or parts of its own sends the step's content.
    assert done["Bob"].subject == "Step subject for Bob"
    assert done["Bob"].body_text == "Step text for Bob"


def test_inline_parts_per_channel():
    step = Step(content=STEP_CONTENT, template="welcome")
    variant = Variant(
        step=step, name="B", subject="Hurry", content={"push": {"body.txt": "Variant push"}}
    )
    push, sms, email = get_channel("push"), get_channel("sms"), get_channel("email")
    assert inline_parts(push, step, variant) == {"title.txt": "Hurry", "body.txt": "Variant push"}
    # SMS has no subject part: the variant's subject does not add one.
    assert inline_parts(sms, step, variant) == {"body.txt": "Step sms"}
    assert inline_parts(email, step, None) == STEP_CONTENT["email"]
    assert inline_parts(email, Step(content={}), Variant(subject="Hi"))["subject.txt"] == "Hi"
    assert inline_parts(email, Step(content={}), Variant()) is None


def test_validate_variant_accepts_good_content_and_names_each_problem():
    validate_variant(
        Variant(
            name="B",
            channel="sms",
            subject="{{ first_name }}",
            content={"sms": {"body.txt": "Hi"}, "push": {"title.txt": "Hi"}},
        )
    )
    validate_variant(Variant(name="Best", channel="best"))
    with pytest.raises(ValidationError) as caught:
        validate_variant(
            Variant(
                name="Bad",
                channel="fax",
                subject="{% if %}",
                content={"email": {"body.txt": "{{ x|nope }}"}, "pager": {"body.txt": "x"}},
            )
        )
    errors = caught.value.message_dict
    assert errors["channel"][0].startswith("Unknown channel 'fax'; configured: ")
    assert errors["subject"][0].startswith("Template error: ")
    assert any(e.startswith("email / body.txt: Template error") for e in errors["content"])
    assert any(e.startswith("Unknown channel 'pager' in the content") for e in errors["content"])
    with pytest.raises(ValidationError, match="Inline content must be"):
        validate_variant(Variant(name="List", content={"email": ["x"]}))


def test_validate_variant_with_broken_channel_settings_is_a_validation_error(settings):
    settings.OMNICHANNEL = {
        **settings.OMNICHANNEL,
        "CHANNELS": {"email": {"BACKEND": "omnichannel.channels.email.EmailChannel", "COST": "x"}},
    }
    with pytest.raises(ValidationError, match="The channels are misconfigured"):
        validate_variant(Variant(name="A"))
