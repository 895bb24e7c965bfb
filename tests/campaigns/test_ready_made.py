"""The ready-made campaigns: created once, valid, never overwriting what staff changed."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command

from omnichannel.campaigns.models import Campaign, CampaignStatus, Step
from omnichannel.campaigns.ready_made import KEYS, create_ready_made_campaigns
from omnichannel.campaigns.triggers import registry
from omnichannel.segments.models import Segment

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("omnichannel_create_campaigns", *args, stdout=out)
    return out.getvalue()


def test_creates_every_ready_made_campaign_as_a_valid_draft():
    output = run()
    assert output.count("created:") == len(KEYS)
    campaigns = Campaign.objects.all()
    assert campaigns.count() == len(KEYS)
    for campaign in campaigns:
        assert campaign.status == CampaignStatus.DRAFT
        campaign.full_clean()
        registry[campaign.trigger].validate_options(campaign.trigger_options)
        for step in campaign.steps.all():
            step.full_clean()


def test_the_abandoned_basket_cascade():
    (result,) = create_ready_made_campaigns(["abandoned_basket"])
    campaign = result.campaign
    assert (campaign.trigger, campaign.trigger_options, campaign.priority) == (
        "abandoned_basket",
        {"delay_minutes": 60},
        100,
    )
    steps = list(campaign.steps.values_list("position", "channel", "wait", "stop_if", "template"))
    assert steps == [
        (1, "email", timedelta(0), "opened", "abandoned_basket"),
        (2, "push", timedelta(hours=4), "opened", "abandoned_basket"),
        (3, "sms", timedelta(hours=20), "opened", "abandoned_basket"),
    ]
    # Measured: a 10 % holdout, and two subjects on the email.
    assert campaign.holdout_percent == 10
    email = campaign.steps.get(position=1)
    variants = list(email.variants.order_by("pk").values_list("name", "subject", "weight"))
    assert [(name[:2], weight) for name, _subject, weight in variants] == [("A:", 1), ("B:", 1)]
    assert variants[0][1] == ""
    assert "items.0.title" in variants[1][1]
    for variant in email.variants.all():
        variant.full_clean()
    welcome = create_ready_made_campaigns(["welcome"])[0].campaign
    assert welcome.holdout_percent == 0


def test_win_back_uses_the_ready_made_drifting_segment_creating_it_if_missing():
    assert not Segment.objects.exists()
    (result,) = create_ready_made_campaigns(["win_back"])
    segment = Segment.objects.get(ready_made="drifting")
    assert result.campaign.trigger_options["segment"] == segment.slug
    step = result.campaign.steps.get()
    assert (step.channel, step.best_hour) == ("best", True)


def test_a_second_run_changes_nothing_and_keeps_staff_edits():
    run()
    basket = Campaign.objects.get(name="Abandoned basket")
    basket.trigger_options = {"delay_minutes": 30}
    basket.priority = 5
    basket.name = "Forgotten basket (ours)"  # a renamed one is still found by its key
    basket.save()
    basket.steps.filter(position=3).delete()
    Campaign.objects.get(name="Welcome").delete()
    before = Step.objects.count()

    output = run()

    assert "created: Welcome" in output
    assert output.count("exists, left as it is") == len(KEYS) - 1
    basket.refresh_from_db()
    assert (basket.trigger_options, basket.priority) == ({"delay_minutes": 30}, 5)
    assert basket.steps.count() == 2
    assert Step.objects.count() == before + 1  # the welcome email
    assert Campaign.objects.count() == len(KEYS)


def test_activate_creates_active_and_activates_drafts_but_not_paused_ones():
    run("welcome", "post_purchase")
    Campaign.objects.filter(name="Welcome").update(status=CampaignStatus.PAUSED)
    output = run("--activate", "welcome", "post_purchase", "abandoned_basket")
    status = dict(Campaign.objects.values_list("name", "status"))
    assert status == {
        "Welcome": CampaignStatus.PAUSED,  # staff paused it: left alone
        "Thank you and what goes with it": CampaignStatus.ACTIVE,
        "Abandoned basket": CampaignStatus.ACTIVE,
    }
    assert "activated: Thank you and what goes with it" in output


def test_steps_on_channels_the_shop_lacks_are_left_out(settings):
    channels = dict(settings.OMNICHANNEL["CHANNELS"])
    del channels["push"]
    settings.OMNICHANNEL = {**settings.OMNICHANNEL, "CHANNELS": channels}
    output = run("abandoned_basket")
    campaign = Campaign.objects.get()
    assert list(campaign.steps.values_list("channel", flat=True)) == ["email", "sms"]
    assert "channel not configured: push" in output


def test_unknown_keys_are_refused():
    with pytest.raises(CommandError, match="unknown ready-made campaign"):
        run("newsletter")
