"""System checks of the ATTRIBUTION_* settings, through Django's check framework."""

from __future__ import annotations

import pytest
from django.core import checks


def attribution_problems() -> list[tuple[str, str]]:
    return [
        (problem.id, problem.msg)
        for problem in checks.run_checks()
        if problem.id and problem.id.startswith(("omnichannel.E01", "omnichannel.W01"))
    ]


def test_the_default_settings_pass():
    assert attribution_problems() == []


@pytest.mark.parametrize(
    ("setting", "value", "problem_id"),
    [
        ("ATTRIBUTION_MODEL", "first_touch", "omnichannel.E010"),
        ("ATTRIBUTION_CLICK_WINDOW", -1, "omnichannel.E011"),
        ("ATTRIBUTION_OPEN_WINDOW", "1 day", "omnichannel.E011"),
        ("ATTRIBUTION_DELIVERY_WINDOW", True, "omnichannel.E011"),
        ("ATTRIBUTION_CLICK_WINDOW", 5 * 24 * 3600 * 1000, "omnichannel.E012"),
        ("ATTRIBUTION_BATCH_SIZE", 0, "omnichannel.E013"),
        ("ATTRIBUTION_INTERVAL", 2.5, "omnichannel.E013"),
        ("ATTRIBUTION_DELIVERY_CHANNELS", "sms", "omnichannel.E014"),
        ("ATTRIBUTION_DELIVERY_CHANNELS", ["sms", "whatsapp"], "omnichannel.W010"),
    ],
)
def test_a_bad_value_is_named(settings, setting, value, problem_id):
    settings.OMNICHANNEL = {**settings.OMNICHANNEL, setting: value}
    problems = attribution_problems()
    assert [found for found, _msg in problems] == [problem_id]
    assert setting in problems[0][1]


def test_a_window_of_zero_and_a_list_of_configured_channels_pass(settings):
    settings.OMNICHANNEL = {
        **settings.OMNICHANNEL,
        "ATTRIBUTION_OPEN_WINDOW": 0,
        "ATTRIBUTION_DELIVERY_CHANNELS": ["sms", "push"],
    }
    assert attribution_problems() == []
