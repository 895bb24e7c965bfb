"""Simulate a day of shoppers in the demo shop and compare the campaigns' cascade with a blast."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sandbox.demo.simulation import SIM_DOMAIN, DaySimulation, SimulationError


def _aware(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("give a time zone, e.g. 2026-03-14T06:00+00:00")
    return moment


class Command(BaseCommand):
    help = (
        "Simulate a day of shoppers in the demo shop on a simulated clock: visits, baskets, "
        "wish lists, orders online (Oscar's checkout) and in stores (the offline-order "
        "service); the fold, the campaign tick and the delivery run every step; each message "
        "gets the person's reaction. Prints per campaign and channel the messages, cost, "
        "opens, clicks and conversions of the cascade and of a blast on every channel. "
        f"Shoppers are added to the database (addresses at {SIM_DOMAIN}, unique per run). "
        "Run it with the demo's worker and beat stopped: they would act on the simulated "
        "shoppers with the real clock."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--shoppers", type=int, default=300, help="shoppers (default 300)")
        parser.add_argument("--seed", type=int, default=1, help="seed of the shoppers (default 1)")
        parser.add_argument(
            "--hours",
            type=int,
            default=48,
            help="length of the simulated window; shoppers arrive in its first 24 hours "
            "(default 48, so that the last cascades finish)",
        )
        parser.add_argument(
            "--step", type=int, default=5, help="minutes per clock step (default 5)"
        )
        parser.add_argument(
            "--start",
            type=_aware,
            default=None,
            help="start of the window, ISO 8601 with a time zone (default: --hours before now, "
            "so the simulated day is the one that just passed)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        began = time.monotonic()
        try:
            simulation = DaySimulation(
                shoppers=options["shoppers"],
                seed=options["seed"],
                hours=options["hours"],
                step_minutes=options["step"],
                start=options["start"],
                log=lambda message: (
                    self.stdout.write(f"  {message}") if options["verbosity"] > 1 else None
                ),
            )
            self.stdout.write(
                f"Simulating {options['shoppers']} shoppers from {simulation.start:%Y-%m-%d %H:%M} "
                f"UTC for {options['hours']} hours..."
            )
            # The app logs every tick at INFO: hundreds of lines for a simulated day.
            quiet = options["verbosity"] < 3
            app_logger = logging.getLogger("omnichannel")
            level = app_logger.level
            if quiet:
                app_logger.setLevel(logging.WARNING)
            try:
                report = simulation.run()
            finally:
                app_logger.setLevel(level)
        except SimulationError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(report.text())
        self.stdout.write(f"({time.monotonic() - began:.0f} s)")
