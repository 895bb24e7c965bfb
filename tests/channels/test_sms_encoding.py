"""Segment counting for GSM-7 and UCS-2 texts: what providers bill."""

from __future__ import annotations

import pytest

from omnichannel.channels.sms.encoding import (
    GSM7,
    GSM7_BASIC,
    UCS2,
    gsm_normalise,
    sms_encoding,
    sms_length,
    sms_segments,
)


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("", 0),
        ("a", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("a" * 459, 3),
        ("a" * 460, 4),
    ],
)
def test_gsm7_edges(text, segments):
    assert sms_encoding(text or "a") == GSM7
    assert sms_segments(text) == segments


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("ж" * 70, 1),
        ("ж" * 71, 2),
        ("ж" * 134, 2),
        ("ж" * 135, 3),
    ],
)
def test_ucs2_edges(text, segments):
    assert sms_encoding(text) == UCS2
    assert sms_segments(text) == segments


def test_the_whole_basic_alphabet_is_gsm7():
    text = "".join(sorted(GSM7_BASIC))
    assert sms_encoding(text) == GSM7
    assert sms_length(text) == len(text)


@pytest.mark.parametrize("char", ["€", "[", "]", "{", "}", "~", "^", "|", "\\", "\f"])
def test_extension_characters_are_gsm7_and_count_two_septets(char):
    assert sms_encoding("price " + char) == GSM7
    assert sms_length(char) == 2
    assert sms_segments(char * 80) == 1  # 160 septets
    assert sms_segments(char * 81) == 2
    assert sms_segments("a" * 159 + char) == 2  # 161 septets


def test_an_escape_sequence_is_not_split_across_parts():
    # 152 + 2 does not fit a 153-septet part: "€" starts part two, which then overflows.
    text = "a" * 152 + "€" + "a" * 152
    assert sms_length(text) == 306  # dividing would say 2
    assert sms_segments(text) == 3
    assert sms_segments("a" * 151 + "€" + "a" * 153) == 2


def test_one_non_gsm_character_makes_the_whole_text_ucs2():
    text = "a" * 69 + "ж"
    assert sms_encoding(text) == UCS2
    assert sms_segments(text) == 1
    assert sms_segments("a" * 70 + "ж") == 2  # would be 1 segment of GSM-7 without it


@pytest.mark.parametrize("char", ["ç", "á", "ł", "\u2019", "\u201c", "\u2013", "\t"])
def test_common_non_gsm_characters(char):
    assert sms_encoding(char) == UCS2


def test_emoji_count_two_utf16_units():
    assert sms_encoding("Hi 😀") == UCS2
    assert sms_length("😀") == 2
    assert sms_segments("😀" * 35) == 1
    assert sms_segments("😀" * 36) == 2
    assert sms_segments("ж" * 69 + "😀") == 2  # 71 units


def test_a_surrogate_pair_is_not_split_across_parts():
    text = "ж" * 66 + "😀" + "ж" * 66
    assert sms_length(text) == 134  # dividing would say 2
    assert sms_segments(text) == 3


def test_newlines_are_gsm7_single_septets():
    assert sms_encoding("a\nb\r\n") == GSM7
    assert sms_length("a\nb\r\n") == 5


def test_gsm_normalise_replaces_typographic_lookalikes():
    text = "Don\u2019t miss \u201cour\u201d sale \u2013 50% off\u2026"
    assert sms_encoding(text) == UCS2
    normalised = gsm_normalise(text)
    assert normalised == 'Don\'t miss "our" sale - 50% off...'
    assert sms_encoding(normalised) == GSM7


def test_gsm_normalise_leaves_texts_that_need_ucs2_anyway():
    text = "Привет \u2013 it\u2019s 😀"
    assert gsm_normalise(text) == text
    assert gsm_normalise("plain") == "plain"
