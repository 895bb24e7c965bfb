"""The request being served, for receivers of model signals that are not given it."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from django.http import HttpRequest


@dataclass
class RequestContext:
    request: HttpRequest
    visitor_key: str


current: ContextVar[RequestContext | None] = ContextVar("omnichannel_request", default=None)


def get_current() -> RequestContext | None:
    return current.get()
