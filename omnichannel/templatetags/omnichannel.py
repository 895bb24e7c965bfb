"""Template tags for message templates: ``{% load omnichannel %}``."""

from __future__ import annotations

from typing import Any

from django import template

from ..tracking import links

register = template.Library()


@register.simple_tag(takes_context=True)
def tracked_url(context: template.Context, url: str) -> str:
    """``url`` made absolute and, when the message's links are tracked by us, wrapped in our
    signed click redirect. Email links are left to the ESP unless EMAIL_CLICK_REDIRECT is set.
    """
    message = context.get("message")
    if message is None or not context.get("track_clicks", True):
        return links.absolute(url)
    if context.get("short_links") and message.pk is not None:
        return links.short_click_url(message, url)
    return links.click_url(message, url)


@register.simple_tag
def absolute_url(url: str) -> str:
    """A shop path as an absolute URL (messages are read outside the shop)."""
    return links.absolute(url)


@register.filter
def first_name_or(profile: Any, fallback: str) -> str:
    """The person's first name, or ``fallback`` (e.g. "there") when we do not know it."""
    name = getattr(profile, "first_name", "") or ""
    return name or fallback
