"""Create (or update) the ready-made segments: Champions, Drifting, Not engaged 90 days, ..."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...segments.ready_made import READY_MADE, create_ready_made_segments


class Command(BaseCommand):
    help = (
        "Create the ready-made segments, or update the rules of those that exist (found by "
        "their ready-made key, so running it twice adds nothing). Keys: "
        + ", ".join(item.key for item in READY_MADE)
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "keys", nargs="*", help="Only these ready-made segments (default: all of them)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            results = create_ready_made_segments(options["keys"] or None)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        for result in results:
            if result.segment is None:
                self.stdout.write(f"skipped: {result.key} ({result.skipped_reason})")
            else:
                verb = "created" if result.created else "updated"
                self.stdout.write(f"{verb}: {result.segment.name} ({result.key})")
