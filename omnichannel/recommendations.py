"""Product recommendations for messages: "people who bought this also bought", then fallbacks.

**Definition.** Two products are *bought together* when the same person bought both, online or
offline, at any time: the co-purchase score of a candidate is the number of people who bought
it and one of the given products (summed over the given products). It is read from
``PurchasedProduct`` (one row per person and product, derived from the lines of every
ORDER_PLACED event: Oscar checkouts and offline orders alike), so a shop's tills count as much
as its website, and the query is an index join rather than a scan of order lines. Per given
product only its most recent ``RECENT_BUYERS`` buyers are looked at: the cost of a best seller
stays bounded, and recent taste weighs more.

When co-purchases do not fill the list, in order:

1. Oscar's hand-picked recommendations of the given products (``Product.recommended_products``,
   highest ``ranking`` first);
2. best sellers of the given products' categories (most orders, from the same table);
3. the shop's best sellers.

Products of the same family are one product: a variant (child) counts for its parent, so the
list shows a T-shirt once, not its five sizes. Only public products with a stock record (or,
for a parent, a public child with one) are returned; whether the strategy lets a person buy
one right now is checked when item dicts are built (``campaigns.content.items_for``). The
given products, their parents and ``exclude`` are never returned.

Everything is batched: ``bought_together_many`` answers for many lists at once with a fixed
number of queries (one per stage, plus one availability check per stage), which is what the
delivery task needs for a batch of messages. SQL is written for PostgreSQL and SQLite (window
functions: SQLite 3.25 or later).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from django.db import connection
from django.db.models import Exists, OuterRef, Q
from oscar.core.loading import get_model

from .segments.models import PurchasedProduct

K = TypeVar("K", bound=Hashable)

#: Buyers of each given product taken into account (the most recent ones).
RECENT_BUYERS = 1000
#: Products a person bought that seed their recommendations when no product is given.
PROFILE_SEEDS = 10


def bought_together(
    product_ids: Iterable[int], *, limit: int, exclude: Iterable[int] = ()
) -> list[int]:
    """Up to ``limit`` product ids to show next to ``product_ids``, best first (see module)."""
    return bought_together_many({0: list(product_ids)}, limit=limit, exclude={0: set(exclude)})[0]


def for_profile(profile: Any, *, limit: int, exclude: Iterable[int] = ()) -> list[int]:
    """Recommendations for a person: bought together with what they bought most recently,
    never what they already bought. Someone who never bought gets the best sellers."""
    bought = purchases_of([profile.pk]).get(profile.pk, [])
    return bought_together(bought[:PROFILE_SEEDS], limit=limit, exclude={*bought, *exclude})


def purchases_of(profile_ids: Iterable[int]) -> dict[int, list[int]]:
    """profile id -> ids of the products they bought, most recent first (one query)."""
    bought: dict[int, list[int]] = defaultdict(list)
    ids = sorted(set(profile_ids))
    if not ids:
        return {}
    rows = (
        PurchasedProduct.objects.filter(profile_id__in=ids)
        .order_by("profile_id", "-last_bought_at", "product_id")
        .values_list("profile_id", "product_id")
    )
    for profile_id, product_id in rows:
        bought[profile_id].append(product_id)
    return dict(bought)


def bought_together_many(
    seeds: Mapping[K, Sequence[int]],
    *,
    limit: int,
    exclude: Mapping[K, Collection[int]] | None = None,
) -> dict[K, list[int]]:
    """``bought_together`` for many lists at once: key -> up to ``limit`` product ids.

    ``seeds`` maps any key (an enrollment id, say) to the given products; ``exclude`` maps a
    key to products never to return for it. At most about ten queries whatever the number of
    keys.
    """
    exclude = exclude or {}
    keys = list(seeds)
    if limit <= 0 or not keys:
        return {key: [] for key in keys}
    all_seeds = {int(pid) for key in keys for pid in seeds[key]}
    parents = _parents(all_seeds)
    families = {
        key: {int(pid) for pid in seeds[key]} | {parents[p] for p in seeds[key] if parents.get(p)}
        for key in keys
    }
    skip = {key: families[key] | {int(pid) for pid in exclude.get(key, ())} for key in keys}
    # Enough candidates per list that exclusions and unavailable products rarely leave a gap.
    depth = limit * 3 + min(max((len(s) for s in skip.values()), default=0), 200)

    chosen: dict[K, list[int]] = {key: [] for key in keys}
    sellable: dict[int, bool] = {}

    def wanting() -> list[K]:
        return [key for key in keys if len(chosen[key]) < limit]

    def take(ranked: Mapping[K, Sequence[int]]) -> None:
        unknown = {pid for ids in ranked.values() for pid in ids if pid not in sellable}
        if unknown:
            found = _sellable(unknown)
            sellable.update({pid: pid in found for pid in unknown})
        for key, candidates in ranked.items():
            picked = chosen[key]
            for pid in candidates:
                if len(picked) >= limit:
                    break
                if sellable.get(pid) and pid not in skip[key] and pid not in picked:
                    picked.append(pid)

    stages = (_co_purchased, _recommended, _category_best_sellers)
    for stage in stages:
        keys_left = [key for key in wanting() if families[key]]
        if keys_left:
            take(stage({key: families[key] for key in keys_left}, depth=depth))
    keys_left = wanting()
    if keys_left:
        best = _best_sellers(depth=depth)
        take({key: best for key in keys_left})
    return chosen


# --- stages: key -> ranked candidate ids ------------------------------------------------------


def _co_purchased(families: Mapping[K, set[int]], *, depth: int) -> dict[K, list[int]]:
    """Per key, products bought by the people who bought one of its products (one query)."""
    all_seeds = sorted({pid for family in families.values() for pid in family})
    scores: dict[int, dict[int, int]] = defaultdict(dict)  # seed -> target -> buyers
    with connection.cursor() as cursor:
        cursor.execute(_co_purchase_sql(len(all_seeds)), [*all_seeds, RECENT_BUYERS, True, depth])
        for seed, target, buyers in cursor.fetchall():
            scores[seed][target] = buyers
    ranked: dict[K, list[int]] = {}
    for key, family in families.items():
        total: dict[int, int] = defaultdict(int)
        for seed in family:
            for target, buyers in scores.get(seed, {}).items():
                total[target] += buyers
        ranked[key] = sorted(total, key=lambda pid: (-total[pid], pid))
    return ranked


def _recommended(families: Mapping[K, set[int]], *, depth: int) -> dict[K, list[int]]:
    """Per key, Oscar's recommended products of its products, highest ranking first."""
    Recommendation = get_model("catalogue", "ProductRecommendation")
    all_seeds = {pid for family in families.values() for pid in family}
    rows = (
        Recommendation.objects.filter(primary_id__in=all_seeds)
        .order_by("-ranking", "recommendation_id")
        .values_list("primary_id", "recommendation_id", "ranking")
    )
    by_primary: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for primary, recommendation, ranking in rows:
        by_primary[primary].append((ranking, recommendation))
    ranked: dict[K, list[int]] = {}
    for key, family in families.items():
        pairs = sorted(
            (pair for pid in family for pair in by_primary.get(pid, [])),
            key=lambda pair: (-pair[0], pair[1]),
        )
        ranked[key] = [recommendation for _ranking, recommendation in pairs][:depth]
    return ranked


def _category_best_sellers(families: Mapping[K, set[int]], *, depth: int) -> dict[K, list[int]]:
    """Per key, the best sellers of its products' categories (two queries)."""
    ProductCategory = get_model("catalogue", "ProductCategory")
    all_seeds = {pid for family in families.values() for pid in family}
    categories_of: dict[int, set[int]] = defaultdict(set)
    for product_id, category_id in (
        ProductCategory.objects.filter(product_id__in=all_seeds)
        .order_by()
        .values_list("product_id", "category_id")
    ):
        categories_of[product_id].add(category_id)
    all_categories = sorted({c for cats in categories_of.values() for c in cats})
    if not all_categories:
        return {}
    best: dict[int, list[tuple[int, int]]] = defaultdict(list)  # category -> (orders, product)
    with connection.cursor() as cursor:
        cursor.execute(_category_sql(len(all_categories)), [*all_categories, True, depth])
        for category, target, orders in cursor.fetchall():
            best[category].append((orders, target))
    ranked: dict[K, list[int]] = {}
    for key, family in families.items():
        orders: dict[int, int] = {}
        for category in {c for pid in family for c in categories_of.get(pid, ())}:
            for count, target in best.get(category, []):
                orders[target] = max(orders.get(target, 0), count)
        ranked[key] = sorted(orders, key=lambda pid: (-orders[pid], pid))
    return ranked


def _best_sellers(*, depth: int) -> list[int]:
    """The shop's best sellers: most orders, online and offline (one query)."""
    with connection.cursor() as cursor:
        cursor.execute(_best_sellers_sql(), [True, depth])
        return [target for target, _orders in cursor.fetchall()]


# --- helpers ------------------------------------------------------------------------------------


def _parents(product_ids: Collection[int]) -> dict[int, int | None]:
    if not product_ids:
        return {}
    Product = get_model("catalogue", "Product")
    return dict(
        Product.objects.filter(pk__in=product_ids).order_by().values_list("pk", "parent_id")
    )


def _sellable(product_ids: Collection[int]) -> set[int]:
    """The ids that are public (and, for a variant, whose parent is) and can have a price:
    a stock record of their own or, for a parent, a public child with one."""
    Product = get_model("catalogue", "Product")
    StockRecord = get_model("partner", "StockRecord")
    own_stock = Exists(StockRecord.objects.filter(product_id=OuterRef("pk")))
    child_stock = Exists(
        StockRecord.objects.filter(product__parent_id=OuterRef("pk"), product__is_public=True)
    )
    return set(
        Product.objects.order_by()
        .filter(pk__in=product_ids, is_public=True)
        .filter(Q(parent__isnull=True) | Q(parent__is_public=True))
        .filter(own_stock | child_stock)
        .values_list("pk", flat=True)
    )


def _names() -> dict[str, str]:
    """Quoted table and column names (from the models: Oscar's may be forked)."""
    quote = connection.ops.quote_name
    Product = get_model("catalogue", "Product")
    ProductCategory = get_model("catalogue", "ProductCategory")

    def column(model: Any, field: str) -> str:
        return quote(model._meta.get_field(field).column)

    return {
        "bought": quote(PurchasedProduct._meta.db_table),
        "b_profile": column(PurchasedProduct, "profile"),
        "b_product": column(PurchasedProduct, "product"),
        "b_orders": column(PurchasedProduct, "orders_count"),
        "b_at": column(PurchasedProduct, "last_bought_at"),
        "product": quote(Product._meta.db_table),
        "p_id": quote(Product._meta.pk.column),
        "p_parent": column(Product, "parent"),
        "p_public": column(Product, "is_public"),
        "category": quote(ProductCategory._meta.db_table),
        "c_product": column(ProductCategory, "product"),
        "c_category": column(ProductCategory, "category"),
    }


def _marks(count: int) -> str:
    return ", ".join(["%s"] * count)


def _co_purchase_sql(seeds: int) -> str:
    # Parameters: the seeds, RECENT_BUYERS, True (is_public), depth. Identifiers come from the
    # models; every value is a parameter.
    n = _names()
    target = f"COALESCE(p.{n['p_parent']}, p.{n['p_id']})"
    return f"""
        SELECT seed, target, buyers FROM (
            SELECT a.seed AS seed, {target} AS target,
                   COUNT(DISTINCT b.{n["b_profile"]}) AS buyers,
                   ROW_NUMBER() OVER (
                       PARTITION BY a.seed
                       ORDER BY COUNT(DISTINCT b.{n["b_profile"]}) DESC, {target}
                   ) AS position
            FROM (
                SELECT buyer, seed FROM (
                    SELECT {n["b_profile"]} AS buyer, {n["b_product"]} AS seed,
                           ROW_NUMBER() OVER (
                               PARTITION BY {n["b_product"]}
                               ORDER BY {n["b_at"]} DESC, {n["b_profile"]}
                           ) AS recency
                    FROM {n["bought"]}
                    WHERE {n["b_product"]} IN ({_marks(seeds)})
                ) recent WHERE recency <= %s
            ) a
            JOIN {n["bought"]} b
              ON b.{n["b_profile"]} = a.buyer AND b.{n["b_product"]} <> a.seed
            JOIN {n["product"]} p ON p.{n["p_id"]} = b.{n["b_product"]}
            WHERE p.{n["p_public"]} = %s
            GROUP BY a.seed, {target}
        ) ranked
        WHERE position <= %s
    """  # noqa: S608


def _category_sql(categories: int) -> str:
    # Parameters: the categories, True (is_public), depth. Categories hold parents and
    # standalone products; a parent's orders are those of its variants.
    n = _names()
    return f"""
        SELECT category, target, orders FROM (
            SELECT c.{n["c_category"]} AS category, c.{n["c_product"]} AS target,
                   SUM(b.{n["b_orders"]}) AS orders,
                   ROW_NUMBER() OVER (
                       PARTITION BY c.{n["c_category"]}
                       ORDER BY SUM(b.{n["b_orders"]}) DESC, c.{n["c_product"]}
                   ) AS position
            FROM {n["category"]} c
            JOIN {n["product"]} p
              ON p.{n["p_id"]} = c.{n["c_product"]} OR p.{n["p_parent"]} = c.{n["c_product"]}
            JOIN {n["bought"]} b ON b.{n["b_product"]} = p.{n["p_id"]}
            WHERE c.{n["c_category"]} IN ({_marks(categories)}) AND p.{n["p_public"]} = %s
            GROUP BY c.{n["c_category"]}, c.{n["c_product"]}
        ) ranked
        WHERE position <= %s
    """  # noqa: S608


def _best_sellers_sql() -> str:
    # Parameters: True (is_public), depth.
    n = _names()
    target = f"COALESCE(p.{n['p_parent']}, p.{n['p_id']})"
    return f"""
        SELECT {target} AS target, SUM(b.{n["b_orders"]}) AS orders
        FROM {n["bought"]} b
        JOIN {n["product"]} p ON p.{n["p_id"]} = b.{n["b_product"]}
        WHERE p.{n["p_public"]} = %s
        GROUP BY {target}
        ORDER BY orders DESC, target
        LIMIT %s
    """  # noqa: S608
