"""Fill the demo shop with a catalogue, customers and 18 months of orders (idempotent)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count
from oscar.core.loading import get_model

from sandbox.demo import data
from sandbox.demo.loader import (
    DEMO_PASSWORD,
    SITE_DOMAIN,
    STAFF_EMAIL,
    DemoLoader,
    omnichannel_installed,
)


class Command(BaseCommand):
    help = (
        "Load the demo shop: staff user, shipping countries, a catalogue with generated pictures, "
        "customers with an order history placed through Oscar, wishlists, their profiles, and "
        "the ready-made campaigns (active). Running it again adds only what is missing."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--customers", type=int, default=40, help="number of customers")
        parser.add_argument(
            "--products",
            type=int,
            default=len(data.PRODUCTS),
            help=f"number of products (at most {len(data.PRODUCTS)})",
        )
        parser.add_argument("--seed", type=int, default=1117, help="seed of the random data")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            loader = DemoLoader(
                customers=options["customers"],
                products=options["products"],
                seed=options["seed"],
                log=lambda message: self.stdout.write(f"  {message}"),
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write("Loading the demo shop...")
        created = loader.run()
        made = ", ".join(f"{n} {what}" for what, n in created.items() if n) or "nothing"
        self.stdout.write(f"  created: {made}")
        self.stdout.write(self.style.SUCCESS(self.summary()))

    def summary(self) -> str:
        Order = get_model("order", "Order")
        Product = get_model("catalogue", "Product")
        ProductImage = get_model("catalogue", "ProductImage")
        lines = [
            f"Demo shop at http://{SITE_DOMAIN}/ "
            f"(staff: {STAFF_EMAIL} / {DEMO_PASSWORD}; customers use the same password)",
            f"  products: {Product.objects.count()} ({ProductImage.objects.count()} images), "
            f"orders: {Order.objects.count()}",
        ]
        if omnichannel_installed():
            from omnichannel.profiles.models import CustomerProfile, Event

            pending = Event.objects.filter(processed_at__isnull=True).count()
            profiles = CustomerProfile.objects.aggregate(
                n=Count("id"), buyers=Count("first_order_at")
            )
            lines.append(
                f"  events: {Event.objects.count()} ({pending} pending), "
                f"profiles: {profiles['n']} ({profiles['buyers']} with orders)"
            )
            from omnichannel.campaigns.models import Campaign, CampaignStatus

            active = Campaign.objects.filter(status=CampaignStatus.ACTIVE).count()
            lines.append(
                f"  campaigns: {active} active; simulate a day of shoppers with "
                "`python manage.py omnichannel_simulate_day`"
            )
        return "\n".join(lines)
