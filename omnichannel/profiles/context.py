"""The request being served, for receivers of model signals that are not given it."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

from django.http import HttpRequest


@dataclass
class RequestContext:
    request: HttpRequest
    visitor_key: str
    #: Baskets whose order this request has recorded: their submission needs no event of its own.
    ordered_basket_ids: set[int] = field(default_factory=set)


current: ContextVar[RequestContext | None] = ContextVar("omnichannel_request", default=None)


def get_current() -> RequestContext | None:
    return current.get()
