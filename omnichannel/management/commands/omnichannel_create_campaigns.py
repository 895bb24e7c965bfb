"""Create the ready-made campaigns: abandoned basket, wishlist, thank-you, welcome, ..."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...campaigns.ready_made import KEYS, create_ready_made_campaigns


class Command(BaseCommand):
    help = (
        "Create the ready-made campaigns that are missing, as drafts (--activate: active). "
        "A campaign that already exists under its name is never changed, so staff edits "
        "survive re-runs (only --activate turns a draft one active); to get a ready-made "
        "campaign back as shipped, rename or delete yours and run this again. Win-back uses "
        "the ready-made segment 'drifting' (created if missing). Keys: " + ", ".join(KEYS)
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "keys", nargs="*", help="Only these ready-made campaigns (default: all of them)."
        )
        parser.add_argument(
            "--activate",
            action="store_true",
            help="Create them active, and activate existing ones that are drafts.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            results = create_ready_made_campaigns(
                options["keys"] or None, activate=options["activate"]
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        for result in results:
            if result.campaign is None:
                self.stdout.write(f"skipped: {result.key} ({result.skipped_reason})")
                continue
            campaign = result.campaign
            if result.created:
                verb = "created"
            elif result.activated:
                verb = "activated"
            else:
                verb = "exists, left as it is"
            line = f"{verb}: {campaign.name} ({result.key}, {campaign.get_status_display()})"
            if result.skipped_channels:
                missing = ", ".join(result.skipped_channels)
                line += f"; steps left out, channel not configured: {missing}"
            self.stdout.write(line)
