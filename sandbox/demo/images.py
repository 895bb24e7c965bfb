"""Product pictures drawn with Pillow: a coloured square with the product's title on it."""

from __future__ import annotations

import io
import textwrap
from functools import cache

from PIL import Image, ImageDraw, ImageFont

SIZE = 600
MARGIN = 40


@cache
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled font, needs FreeType
    except (OSError, TypeError, ValueError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    r, g, b = (max(0, min(255, round(c * factor))) for c in colour)
    return (r, g, b)


def render_product_image(
    title: str, subtitle: str, colour: tuple[int, int, int], *, variant: int = 0
) -> bytes:
    """A PNG picture of ``title`` on a background of ``colour`` (``variant`` varies the shade)."""
    background = _shade(colour, 0.85 + 0.1 * (variant % 4))
    image = Image.new("RGB", (SIZE, SIZE), background)
    draw = ImageDraw.Draw(image)
    # A lighter "product" block and a floor line, so the pictures look like more than a label.
    draw.rounded_rectangle(
        (MARGIN * 3, MARGIN * 2, SIZE - MARGIN * 3, SIZE // 2 + MARGIN),
        radius=36,
        fill=_shade(colour, 1.35),
        outline=(255, 255, 255),
        width=6,
    )
    draw.line((MARGIN, SIZE // 2 + MARGIN + 20, SIZE - MARGIN, SIZE // 2 + MARGIN + 20), width=4)

    initials = "".join(word[0] for word in title.split()[:2]).upper()
    big_font = _font(120)
    box = draw.textbbox((0, 0), initials, font=big_font)
    draw.text(
        ((SIZE - (box[2] - box[0])) / 2 - box[0], (MARGIN * 2 + SIZE // 2 + MARGIN) / 2 - 70),
        initials,
        font=big_font,
        fill=(255, 255, 255),
    )

    title_font, small_font = _font(44), _font(26)
    y = SIZE // 2 + MARGIN * 2
    for line in textwrap.wrap(title, width=20)[:3]:
        width = draw.textlength(line, font=title_font)
        draw.text(((SIZE - width) / 2, y), line, font=title_font, fill=(255, 255, 255))
        y += 54
    width = draw.textlength(subtitle, font=small_font)
    draw.text(((SIZE - width) / 2, SIZE - MARGIN - 30), subtitle, font=small_font, fill="#f0f0f0")

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
