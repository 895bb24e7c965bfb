"""SMS encodings and segment counting (3GPP TS 23.038 and 23.040), which is what providers bill.

A text made only of GSM 03.38 characters goes as GSM-7: 160 septets in a single SMS, 153 per
part once it is split (the user data header takes the rest). The extension table's characters
(``€ [ ] { } ~ ^ | \\`` and form feed) are an escape plus a septet: they count 2. Any other
character switches the whole text to UCS-2: 70 UTF-16 code units single, 67 per part; an emoji
outside the Basic Multilingual Plane is a surrogate pair and counts 2.

When a text is split, an escape sequence or a surrogate pair is never cut in two (providers
move it to the next part), so the count is done by packing, not by dividing.
"""

from __future__ import annotations

GSM7 = "GSM-7"
UCS2 = "UCS-2"

#: The GSM 03.38 default alphabet, without the escape (0x1B) that introduces the extension.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
#: The extension table: each costs two septets (escape + character).
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

#: Per-segment capacity: (single message, each part of a split message).
GSM7_LIMITS = (160, 153)
UCS2_LIMITS = (70, 67)

#: Typographic characters that word processors and translators put in texts, and the GSM-7
#: characters that look the same. One curly apostrophe would otherwise turn a 160-character
#: text into a 3-segment UCS-2 one (the "smart encoding" most SMS providers offer).
GSM7_LOOKALIKES = {
    "\u2018": "'",  # left single quotation mark
    "\u2019": "'",  # right single quotation mark / apostrophe
    "\u201a": "'",
    "\u2032": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u201e": '"',
    "\u2033": '"',
    "\u00ab": '"',
    "\u00bb": '"',
    "\u2010": "-",
    "\u2011": "-",
    "\u2012": "-",
    "\u2013": "-",  # en dash
    "\u2014": "-",  # em dash
    "\u2212": "-",
    "\u2026": "...",
    "\u00a0": " ",  # no-break space
    "\u2002": " ",
    "\u2003": " ",
    "\u2009": " ",
    "\u202f": " ",
    "\u200b": "",  # zero-width space
    "\ufeff": "",
    "\u2022": "-",  # bullet
    "\u00b4": "'",
    "`": "'",  # not in GSM-7 either
    "\t": " ",
}


def is_gsm7(text: str) -> bool:
    """Whether every character of ``text`` is in the GSM-7 alphabet (basic or extension)."""
    return all(char in GSM7_BASIC or char in GSM7_EXTENSION for char in text)


def sms_encoding(text: str) -> str:
    """``"GSM-7"`` when the text fits the GSM alphabet, else ``"UCS-2"``."""
    return GSM7 if is_gsm7(text) else UCS2


def _units(text: str, encoding: str) -> list[int]:
    """What each character costs: septets for GSM-7, UTF-16 code units for UCS-2."""
    if encoding == GSM7:
        return [2 if char in GSM7_EXTENSION else 1 for char in text]
    return [2 if ord(char) > 0xFFFF else 1 for char in text]


def sms_length(text: str) -> int:
    """Septets (GSM-7) or UTF-16 code units (UCS-2) the text takes."""
    return sum(_units(text, sms_encoding(text)))


def sms_segments(text: str) -> int:
    """How many SMS the text is sent as (and billed for); 0 for an empty text."""
    if not text:
        return 0
    encoding = sms_encoding(text)
    units = _units(text, encoding)
    single, per_part = GSM7_LIMITS if encoding == GSM7 else UCS2_LIMITS
    if sum(units) <= single:
        return 1
    segments, used = 1, 0
    for cost in units:
        # An escape sequence or surrogate pair that does not fit goes whole to the next part.
        if used + cost > per_part:
            segments += 1
            used = 0
        used += cost
    return segments


def gsm_normalise(text: str) -> str:
    """Replace typographic look-alikes by GSM-7 characters when that makes the text GSM-7.

    A text that needs UCS-2 anyway (Cyrillic, emoji, ...) is returned unchanged: the
    replacement would save nothing and would change what the author wrote.
    """
    if is_gsm7(text):
        return text
    replaced = "".join(GSM7_LOOKALIKES.get(char, char) for char in text)
    return replaced if is_gsm7(replaced) else text
