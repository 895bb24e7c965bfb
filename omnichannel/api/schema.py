"""drf-spectacular hooks: our schema describes our endpoints only."""

from __future__ import annotations

from typing import Any


def only_omnichannel_endpoints(endpoints: list[tuple[Any, ...]], **kwargs: Any) -> list[Any]:
    """Keep the endpoints served by omnichannel.api views (the shop may have other APIs)."""
    from .views import ApiView

    return [
        endpoint
        for endpoint in endpoints
        if isinstance(getattr(endpoint[3], "cls", None), type)
        and issubclass(endpoint[3].cls, ApiView)
    ]
