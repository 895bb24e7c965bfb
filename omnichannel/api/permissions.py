"""Scopes: each endpoint needs its own; a key without it gets 403."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission

from .models import ApiKey


class HasScope(BasePermission):
    """The request's API key holds the view's ``required_scope``."""

    def has_permission(self, request: Any, view: Any) -> bool:
        key = request.auth
        if not isinstance(key, ApiKey):
            return False  # DRF answers 401: no credentials were given
        scope = getattr(view, "required_scope", None)
        if scope is None or key.has_scope(scope):
            return True
        self.message = f"This API key lacks the '{scope}' scope."
        return False
