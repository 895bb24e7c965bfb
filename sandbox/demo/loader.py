"""Load the demo shop: site, staff, countries, catalogue, customers with their order history.

Every step looks for what it would create first, so loading twice changes nothing. Orders go
through Oscar's real ``OrderCreator`` (so our ``order_placed`` receiver records them) and are
then moved back to their planned date, together with the events they produced.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.contrib.sites.models import Site
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify
from oscar.apps.catalogue.categories import create_from_breadcrumbs
from oscar.core.loading import get_class, get_model

from . import data
from .images import render_product_image
from .plan import CustomerPlan, Moment, OrderPlan, build_plan

User = get_user_model()
Country = get_model("address", "Country")
UserAddress = get_model("address", "UserAddress")
Basket = get_model("basket", "Basket")
BasketLine = get_model("basket", "Line")
Category = get_model("catalogue", "Category")
Product = get_model("catalogue", "Product")
ProductClass = get_model("catalogue", "ProductClass")
ProductCategory = get_model("catalogue", "ProductCategory")
ProductImage = get_model("catalogue", "ProductImage")
Order = get_model("order", "Order")
ShippingAddress = get_model("order", "ShippingAddress")
Partner = get_model("partner", "Partner")
StockRecord = get_model("partner", "StockRecord")
WishList = get_model("wishlists", "WishList")
Selector = get_class("partner.strategy", "Selector")
Free = get_class("shipping.methods", "Free")
FixedPrice = get_class("shipping.methods", "FixedPrice")
OrderCreator = get_class("order.utils", "OrderCreator")
OrderTotalCalculator = get_class("checkout.calculators", "OrderTotalCalculator")
SurchargeApplicator = get_class("checkout.applicator", "SurchargeApplicator")

SITE_DOMAIN = "localhost:8000"
SITE_NAME = "Omnichannel demo shop"
STAFF_USERNAME = "staff"
STAFF_EMAIL = "staff@example.com"
#: Password of the staff user and of every demo customer (log in as one to see the shop).
DEMO_PASSWORD = "omnichannel-demo"
FREE_SHIPPING_FROM = Decimal("50.00")
STANDARD_SHIPPING = Decimal("4.95")
#: Orders older than this are complete (shipped); newer ones are still being processed.
SHIPPED_AFTER = timedelta(days=7)

Log = Callable[[str], None]


def omnichannel_installed() -> bool:
    return apps.is_installed("omnichannel")


class DemoLoader:
    def __init__(
        self,
        *,
        customers: int = 40,
        products: int = 30,
        seed: int = 1117,
        now: datetime | None = None,
        log: Log | None = None,
    ) -> None:
        if not 1 <= products <= len(data.PRODUCTS):
            raise ValueError(f"products must be between 1 and {len(data.PRODUCTS)}")
        if customers < 0:
            raise ValueError("customers must not be negative")
        self.n_customers = customers
        self.n_products = products
        self.seed = seed
        self.now = now or timezone.now()
        self.log = log or (lambda message: None)
        self.created: Counter[str] = Counter()
        self.products: list = []
        self._password: str | None = None

    # --- helpers ---------------------------------------------------------------------------

    def at(self, moment: Moment) -> datetime:
        if moment.hours_ago is not None:
            delta = timedelta(hours=moment.hours_ago, minutes=moment.minute, seconds=moment.second)
            return (self.now - delta).replace(microsecond=0)
        day = self.now - timedelta(days=moment.days_ago)
        return day.replace(
            hour=moment.hour, minute=moment.minute, second=moment.second, microsecond=0
        )

    def password(self) -> str:
        # One hash for everybody: hashing 40 passwords with PBKDF2 would take most of the run.
        if self._password is None:
            self._password = make_password(DEMO_PASSWORD)
        return self._password

    # --- steps -----------------------------------------------------------------------------

    def run(self) -> Counter[str]:
        with warnings.catch_warnings():
            # Haystack's simple backend (the demo's search) warns on every product saved.
            warnings.filterwarnings("ignore", "update is not implemented", UserWarning)
            self.load_site()
            self.load_staff()
            self.load_countries()
            self.load_catalogue()
            self.load_customers()
            self.update_search_index()
        # Before the fold, so that the history's fresh events (open baskets, today's orders)
        # enroll people as they would have in a running shop.
        self.load_campaigns()
        self.fold()
        self.load_channels()
        return self.created

    def load_site(self) -> None:
        site, created = Site.objects.get_or_create(
            pk=1, defaults={"domain": SITE_DOMAIN, "name": SITE_NAME}
        )
        if (site.domain, site.name) != (SITE_DOMAIN, SITE_NAME):
            site.domain, site.name = SITE_DOMAIN, SITE_NAME
            site.save()
            created = True
        Site.objects.clear_cache()
        self.created["site"] += int(created)

    def load_staff(self) -> None:
        user = User._default_manager.filter(username=STAFF_USERNAME).first()
        if user is None:
            user = User(username=STAFF_USERNAME)
            self.created["staff user"] += 1
        changed = user.pk is None
        for attr, value in [
            ("email", STAFF_EMAIL),
            ("first_name", "Demo"),
            ("last_name", "Staff"),
            ("is_staff", True),
            ("is_superuser", True),
            ("is_active", True),
        ]:
            if getattr(user, attr) != value:
                setattr(user, attr, value)
                changed = True
        if not user.check_password(DEMO_PASSWORD):
            user.password = self.password()
            changed = True
        if changed:
            user.save()

    def load_countries(self) -> None:
        for order, (a2, a3, numeric, printable, name) in enumerate(data.COUNTRIES):
            wanted = {
                "iso_3166_1_a3": a3,
                "iso_3166_1_numeric": numeric,
                "printable_name": printable,
                "name": name,
                "display_order": len(data.COUNTRIES) - order,  # higher first: GB on top
                "is_shipping_country": True,
            }
            country = Country.objects.filter(iso_3166_1_a2=a2).first()
            if country is None:
                Country.objects.create(iso_3166_1_a2=a2, **wanted)
                self.created["countries"] += 1
            elif any(getattr(country, k) != v for k, v in wanted.items()):
                Country.objects.filter(pk=a2).update(**wanted)

    def load_catalogue(self) -> None:
        product_class, created = ProductClass.objects.get_or_create(
            slug=slugify(data.PRODUCT_CLASS),
            defaults={"name": data.PRODUCT_CLASS, "requires_shipping": True, "track_stock": True},
        )
        self.created["product class"] += int(created)
        partner, created = Partner.objects.get_or_create(
            code=slugify(data.PARTNER), defaults={"name": data.PARTNER}
        )
        self.created["partner"] += int(created)
        before = Category.objects.count()
        categories = {path: create_from_breadcrumbs(path) for path in data.CATEGORIES}
        self.created["categories"] += Category.objects.count() - before
        launched = self.now - timedelta(days=600)
        for index, spec in enumerate(data.PRODUCTS[: self.n_products]):
            with transaction.atomic():
                product = self._product(index, spec, product_class, categories, launched)
                self._stockrecord(index, spec, product, partner)
                self._image(index, spec, product)
            self.products.append(product)
        self.log(f"catalogue: {len(self.products)} products in {len(categories)} categories")

    def _product(self, index, spec, product_class, categories, launched):
        upc = f"50{60000000000 + index * 7919:011d}"
        product = Product.objects.filter(upc=upc).first()
        if product is None:
            colour_line = data.CATEGORIES[spec.category][1]
            product = Product.objects.create(
                upc=upc,
                title=spec.title,
                description=f"<p>{spec.blurb}</p><p>{colour_line}</p>",
                product_class=product_class,
                structure=Product.STANDALONE,
                is_public=True,
            )
            Product.objects.filter(pk=product.pk).update(date_created=launched)
            self.created["products"] += 1
        category = categories[spec.category]
        if not ProductCategory.objects.filter(product=product, category=category).exists():
            ProductCategory.objects.create(product=product, category=category)
        return product

    def _stockrecord(self, index, spec, product, partner) -> None:
        # Stock levels are set once: later runs leave what orders allocated and consumed alone.
        _, created = StockRecord.objects.get_or_create(
            partner=partner,
            partner_sku=f"OMNI-{index + 1:04d}",
            defaults={
                "product": product,
                "price": spec.price,
                "num_in_stock": 150 + (index * 37) % 200,
                "low_stock_threshold": 10,
            },
        )
        self.created["stock records"] += int(created)

    def _image(self, index, spec, product) -> None:
        image = ProductImage.objects.filter(product=product).order_by("display_order").first()
        if (
            image is not None
            and image.original
            and image.original.storage.exists(image.original.name)
        ):
            return
        colour = data.CATEGORIES[spec.category][0]
        content = ContentFile(
            render_product_image(spec.title, spec.category.split(" > ")[-1], colour, variant=index)
        )
        if image is None:
            image = ProductImage(product=product, caption=spec.title, display_order=0)
        image.original.save(f"{product.slug or slugify(spec.title)}.png", content, save=True)
        self.created["images"] += 1

    def load_customers(self) -> None:
        plans = build_plan(seed=self.seed, customers=self.n_customers, products=self.n_products)
        country = Country.objects.get(pk="GB")
        for plan in plans:
            with transaction.atomic():
                self._customer(plan, country)
        self.log(f"customers: {len(plans)}")

    def _customer(self, plan: CustomerPlan, country) -> None:
        user = User._default_manager.filter(username=plan.email).first()
        if user is None:
            user = User._default_manager.create(
                username=plan.email,
                email=plan.email,
                first_name=plan.first_name,
                last_name=plan.last_name,
                password=self.password(),
                date_joined=self.at(plan.joined),
            )
            self.created["customers"] += 1
        self._registration_event(user)
        if not UserAddress.objects.filter(user=user).exists():
            address = UserAddress(user=user, **self._address_fields(plan, country))
            address.is_default_for_shipping = address.is_default_for_billing = True
            address.save()
        for order_plan in plan.orders:
            if not Order.objects.filter(number=order_plan.number).exists():
                self._place_order(plan, order_plan, user, country)
        self._wishlist(plan, user)
        self._open_basket(plan, user)

    @staticmethod
    def _address_fields(plan: CustomerPlan, country) -> dict:
        return {
            "title": "",
            "first_name": plan.first_name,
            "last_name": plan.last_name,
            "line1": plan.line1,
            "line4": plan.town,
            "postcode": plan.postcode,
            "country": country,
            "phone_number": plan.phone,
        }

    def _registration_event(self, user) -> None:
        if not omnichannel_installed():
            return
        from omnichannel.profiles.models import Event, EventType
        from omnichannel.profiles.recording import registration_event, save_event

        if not Event.objects.filter(user_id=user.pk, type=EventType.USER_REGISTERED).exists():
            save_event(registration_event(user, occurred_at=user.date_joined))
            self.created["registration events"] += 1

    def _fill_basket(self, basket, lines: list[tuple[int, int]], user) -> None:
        basket.strategy = Selector().strategy(user=user)
        for product_index, quantity in lines:
            basket.add_product(self.products[product_index], quantity)

    def _place_order(self, plan: CustomerPlan, order_plan: OrderPlan, user, country) -> None:
        placed_at = self.at(order_plan.at)
        buyer = None if order_plan.guest else user
        basket = Basket.objects.create(owner=buyer)
        self._fill_basket(basket, order_plan.lines, buyer)
        shipping_address = ShippingAddress.objects.create(**self._address_fields(plan, country))
        if basket.total_incl_tax >= FREE_SHIPPING_FROM:
            method = Free()
        else:
            method = FixedPrice(STANDARD_SHIPPING, STANDARD_SHIPPING)
        charge = method.calculate(basket)
        surcharges = SurchargeApplicator().get_applicable_surcharges(basket)
        total = OrderTotalCalculator().calculate(basket, charge, surcharges)
        shipped = self.now - placed_at > SHIPPED_AFTER
        extra = {"guest_email": plan.email} if order_plan.guest else {}
        order = OrderCreator().place_order(
            basket=basket,
            total=total,
            shipping_method=method,
            shipping_charge=charge,
            user=buyer,
            shipping_address=shipping_address,
            order_number=order_plan.number,
            status="Complete" if shipped else "Being processed",
            surcharges=surcharges,
            date_placed=placed_at,
            **extra,
        )
        basket.submit()
        if shipped:
            for line in order.lines.select_related("stockrecord"):
                if line.stockrecord is not None:
                    line.stockrecord.consume_allocation(line.quantity)
        self._backdate_basket(basket, placed_at - timedelta(minutes=15), submitted_at=placed_at)
        if omnichannel_installed():
            from omnichannel.profiles.models import Event, EventType

            Event.objects.filter(type=EventType.ORDER_PLACED, order_id=order.pk).update(
                occurred_at=placed_at
            )
        self.created["orders"] += 1

    def _backdate_basket(self, basket, created_at: datetime, *, submitted_at=None) -> None:
        """Move a basket, its lines and the events they produced back to ``created_at``."""
        Basket.objects.filter(pk=basket.pk).update(
            date_created=created_at, date_submitted=submitted_at
        )
        BasketLine.objects.filter(basket=basket).update(
            date_created=created_at, date_updated=created_at
        )
        if not omnichannel_installed():
            return
        from omnichannel.profiles.models import BASKET_ACTIVITY_TYPES, Event, EventType

        events = Event.objects.filter(basket_id=basket.pk, processed_at__isnull=True)
        events.filter(type__in=BASKET_ACTIVITY_TYPES).update(occurred_at=created_at)
        if submitted_at is not None:
            events.filter(type=EventType.BASKET_SUBMITTED).update(occurred_at=submitted_at)

    def _wishlist(self, plan: CustomerPlan, user) -> None:
        if not plan.wishlist:
            return
        wishlist = WishList.objects.filter(owner=user).order_by("pk").first()
        if wishlist is None:
            wishlist = WishList.objects.create(owner=user, name="Wish list")
            first = min(self.at(moment) for _, moment in plan.wishlist)
            WishList.objects.filter(pk=wishlist.pk).update(date_created=first)
            self.created["wishlists"] += 1
        for product_index, moment in plan.wishlist:
            product = self.products[product_index]
            if wishlist.lines.filter(product=product).exists():
                continue
            wishlist.add(product)
            if omnichannel_installed():
                from omnichannel.profiles.models import Event, EventType

                Event.objects.filter(
                    type=EventType.WISHLIST_LINE_ADDED,
                    user_id=user.pk,
                    product_id=product.pk,
                    processed_at__isnull=True,
                ).update(occurred_at=self.at(moment))

    def _open_basket(self, plan: CustomerPlan, user) -> None:
        """A basket left with things in it a few hours or days ago (abandoned, so far)."""
        if not plan.open_basket or Basket.open.filter(owner=user).exists():
            return
        basket = Basket.objects.create(owner=user)
        self._fill_basket(basket, plan.open_basket, user)
        when = (self.now - timedelta(hours=plan.open_basket_hours_ago)).replace(microsecond=0)
        self._backdate_basket(basket, when)
        self.created["open baskets"] += 1

    def update_search_index(self) -> None:
        """Index the catalogue for search backends that keep an index (not the simple one)."""
        engine = settings.HAYSTACK_CONNECTIONS.get("default", {}).get("ENGINE", "")
        if not engine or engine.endswith("simple_backend.SimpleEngine"):
            return
        call_command("update_index", remove=True, verbosity=0)
        self.log(f"search index updated ({engine.rsplit('.', 1)[-1]})")

    def load_campaigns(self) -> None:
        """The ready-made campaigns, active, so the demo shop runs them. Only missing ones are
        created: one staff changed, paused or set back to draft stays as it is."""
        if not omnichannel_installed():
            return
        from omnichannel.campaigns.models import CampaignStatus
        from omnichannel.campaigns.ready_made import create_ready_made_campaigns

        for result in create_ready_made_campaigns():
            if result.created:
                self.created["campaigns"] += 1
                result.campaign.status = CampaignStatus.ACTIVE
                result.campaign.save(update_fields=["status", "updated_at"])

    def fold(self) -> None:
        if not omnichannel_installed():
            return
        from omnichannel.profiles.identity import fold_pending_events

        folded = fold_pending_events(now=timezone.now(), batch_size=1000)
        self.created["events folded"] += folded

    def load_channels(self) -> None:
        """Consents, push devices and Telegram chats, so every channel has someone to reach.

        Drawn from a generator seeded per customer (like the plan). The first customer can be
        reached on every channel: the one to pick for a test send from the admin.
        """
        if not omnichannel_installed():
            return
        import random

        from push_notifications.models import APNSDevice, GCMDevice, WebPushDevice

        from omnichannel.profiles.consents import current_consents, record_consent
        from omnichannel.profiles.models import CustomerProfile, Identity, IdentityKind

        first_email = self._first_customer_email()
        profiles = CustomerProfile.objects.filter(user__isnull=False).select_related("user")
        for profile in profiles.order_by("user__date_joined", "pk"):
            user = profile.user
            rng = random.Random(f"{self.seed}:channels:{user.username}")
            first = user.username == first_email
            with transaction.atomic():
                wants = {
                    "email": first or rng.random() < 0.75,
                    "sms": first or rng.random() < 0.35,
                    "webpush": first or rng.random() < 0.4,
                    "push": first or rng.random() < 0.3,
                    "messenger": first or rng.random() < 0.2,
                }
                if wants["webpush"]:
                    WebPushDevice.objects.get_or_create(
                        registration_id=f"https://push.example.invalid/wpush/{user.pk}",
                        defaults={
                            "user": user,
                            "name": "Chrome on laptop",
                            "browser": "CHROME",
                            "p256dh": "BDemoKeyDemoKeyDemoKeyDemoKeyDemoKeyDemoKey",
                            "auth": "demoauthsecret",
                        },
                    )
                if wants["push"]:
                    if rng.random() < 0.5 and not first:
                        APNSDevice.objects.get_or_create(
                            registration_id=f"{user.pk:064x}",
                            defaults={"user": user, "name": "iPhone"},
                        )
                    else:
                        GCMDevice.objects.get_or_create(
                            registration_id=f"demo-fcm-token-{user.pk}",
                            defaults={"user": user, "name": "Android", "cloud_message_type": "FCM"},
                        )
                if wants["messenger"]:
                    Identity.objects.get_or_create(
                        kind=IdentityKind.TELEGRAM,
                        value=str(100_000_000 + user.pk),
                        defaults={"profile": profile},
                    )
                existing = current_consents(profile)
                for channel, granted in wants.items():
                    if (channel, "marketing") in existing:
                        continue
                    record_consent(
                        profile,
                        channel=channel,
                        purpose="marketing",
                        granted=granted,
                        now=self.at(Moment(days_ago=rng.randint(30, 400), hour=12, minute=0)),
                        source="web",
                        note="demo data",
                    )
                    self.created["consents"] += 1
        self.log(f"channels: consents {self.created['consents']}")

    def _first_customer_email(self) -> str:
        plans = build_plan(seed=self.seed, customers=1, products=self.n_products)
        return plans[0].email if plans else ""
