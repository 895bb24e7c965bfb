"""Triggers of triggered campaigns (see ``base`` for the interface)."""

from .base import EnrollmentSpec, Option, Trigger
from .registry import TriggerRegistry, registry

__all__ = ["EnrollmentSpec", "Option", "Trigger", "TriggerRegistry", "registry"]
