"""Finding Oscar products by id, partner SKU or UPC, for a whole request in a few queries."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from django.utils.translation import gettext as _
from oscar.core.loading import get_model


@dataclass(frozen=True)
class ProductRef:
    """What an order line needs of a product (the shape of an online order's line)."""

    pk: int
    title: str
    upc: str
    sku: str  # partner SKU of its first stock record, "" without one


@dataclass
class ProductLookup:
    by_id: dict[int, ProductRef] = field(default_factory=dict)
    by_partner_sku: dict[str, list[ProductRef]] = field(default_factory=dict)
    by_upc: dict[str, ProductRef] = field(default_factory=dict)

    @classmethod
    def for_references(
        cls, *, ids: Iterable[int] = (), skus: Iterable[str] = (), upcs: Iterable[str] = ()
    ) -> ProductLookup:
        """Load every product named by these ids, SKUs (partner SKU or UPC) and UPCs.

        At most four queries, whatever the number of references: products by id or UPC,
        stock records by partner SKU, then the products and SKUs of all of those.
        """
        Product = get_model("catalogue", "Product")
        StockRecord = get_model("partner", "StockRecord")
        ids, skus, upcs = set(ids), set(skus), set(upcs)
        lookup = cls()
        if not (ids or skus or upcs):
            return lookup
        sku_products: dict[str, set[int]] = {}
        if skus:
            for sku, product_id in StockRecord._default_manager.filter(
                partner_sku__in=skus
            ).values_list("partner_sku", "product_id"):
                sku_products.setdefault(sku, set()).add(product_id)
        wanted = ids | {pk for pks in sku_products.values() for pk in pks}
        products = Product._default_manager.filter(pk__in=wanted)
        if skus | upcs:
            products = products | Product._default_manager.filter(upc__in=skus | upcs)
        rows = list(products.values_list("pk", "title", "upc", "parent__title"))
        first_sku: dict[int, str] = {}
        for product_id, sku in (
            StockRecord._default_manager.filter(product_id__in=[row[0] for row in rows])
            .order_by("-pk")
            .values_list("product_id", "partner_sku")
        ):
            first_sku[product_id] = sku  # ordered by -pk: the first stock record wins
        for pk, title, upc, parent_title in rows:
            ref = ProductRef(
                pk=pk, title=title or parent_title or "", upc=upc or "", sku=first_sku.get(pk, "")
            )
            lookup.by_id[pk] = ref
            if upc:
                lookup.by_upc[upc] = ref
        for sku, pks in sku_products.items():
            lookup.by_partner_sku[sku] = [lookup.by_id[pk] for pk in sorted(pks)]
        return lookup

    @classmethod
    def ids_for_references(
        cls, *, ids: Iterable[int] = (), skus: Iterable[str] = ()
    ) -> ProductLookup:
        """Only what events need: which ids exist, and the product of each SKU (partner SKU,
        else UPC). One query per kind of reference, and none for UPCs when every SKU is a
        partner SKU (the common case)."""
        Product = get_model("catalogue", "Product")
        StockRecord = get_model("partner", "StockRecord")
        ids, skus = set(ids), set(skus)
        lookup = cls()

        def ref(pk: int) -> ProductRef:
            return lookup.by_id.setdefault(pk, ProductRef(pk=pk, title="", upc="", sku=""))

        if ids:
            for pk in Product._default_manager.filter(pk__in=ids).values_list("pk", flat=True):
                ref(pk)
        if skus:
            sku_products: dict[str, set[int]] = {}
            for sku, product_id in StockRecord._default_manager.filter(
                partner_sku__in=skus
            ).values_list("partner_sku", "product_id"):
                sku_products.setdefault(sku, set()).add(product_id)
            for sku, pks in sku_products.items():
                lookup.by_partner_sku[sku] = [ref(pk) for pk in sorted(pks)]
            missing = skus - set(sku_products)
            if missing:
                for pk, upc in Product._default_manager.filter(upc__in=missing).values_list(
                    "pk", "upc"
                ):
                    lookup.by_upc[upc] = ref(pk)
        return lookup

    def resolve(
        self, *, product_id: int | None = None, sku: str | None = None, upc: str | None = None
    ) -> tuple[str, str, ProductRef | None]:
        """(field, problem, product): problem is "" when found or when nothing was named."""
        if product_id is not None:
            ref = self.by_id.get(product_id)
            return "product_id", "" if ref else _("No product with id %d.") % product_id, ref
        if sku is not None:
            matches = self.by_partner_sku.get(sku, [])
            if len(matches) > 1:
                return "sku", _("SKU %r names several products.") % sku, None
            ref = matches[0] if matches else self.by_upc.get(sku)
            return "sku", "" if ref else _("No product with partner SKU or UPC %r.") % sku, ref
        if upc is not None:
            ref = self.by_upc.get(upc)
            return "upc", "" if ref else _("No product with UPC %r.") % upc, ref
        return "", "", None
