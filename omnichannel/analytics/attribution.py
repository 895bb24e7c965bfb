"""Attribution of orders (online and offline) to the messages that earned them.

An order is an ``order_placed`` event with a profile (the fold has resolved who placed it).
It goes to at most one message of that person: the last one clicked within the click window
before the order, else the last one opened within the open window, else the last one
delivered within the delivery window on a channel that reports no opens. A window is
``[ordered_at - window, ordered_at)``: its start counts, the order's own instant does not.
Times come from the messages' reports (``MessageStatusChange``): per kind, the latest one
before the order inside its window (``Message.clicked_at`` and co. hold the earliest). On a
channel whose backend reports no deliveries, the ``sent`` report counts as the delivery.
Every other message that touched the order within the windows is kept as an ``Influence``.

A run has two passes, both set-based and batched by ``ATTRIBUTION_BATCH_SIZE``:

* **Re-checks**: conversions whose answer may have changed since ``attributed_at`` (the time
  they were last computed): a report about one of the person's messages that happened within
  the windows before the order was *recorded* after that time (a late webhook, a click on an
  old email), or the person's profile absorbed another one since (a merge brings that
  person's messages and orders). Reports are read from the ``AttributionState`` bookmark on,
  which moves only after a complete pass without ``since`` and without failures. Changed rows
  are updated in place, their influences replaced, and ``attributed_at`` moves to the run's
  time.
* **New orders** get their ``Conversion`` (model "none" when nothing touched them) with one
  ``INSERT ... SELECT`` for the conversions and one for the influences (one snapshot:
  REPEATABLE READ on PostgreSQL); ``ON CONFLICT DO NOTHING`` on the one-conversion-per-order
  constraint makes a repeated or concurrent run harmless.

See docs/analytics.md, section "Attribution".
"""

# ruff: noqa: S608  (SQL text holds identifiers and constants only; every value is a parameter)
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.db import IntegrityError, OperationalError, connection, models, transaction
from django.db.models import Exists, F, Min, OuterRef
from django.utils import timezone

from ..channels.models import (
    ATTRIBUTION_REPORT_STATUSES,
    Message,
    MessageStatus,
    MessageStatusChange,
)
from ..conf import app_settings
from ..exceptions import ConfigurationError
from ..profiles.models import Event, EventType, ProfileMerge
from .models import AttributionModel, AttributionState, Conversion, Influence

logger = logging.getLogger("omnichannel.analytics")

#: Values of ATTRIBUTION_MODEL.
LAST_TOUCH = "last_touch"
LAST_CLICK = "last_click"
MODELS = (LAST_TOUCH, LAST_CLICK)

#: A report is committed (and a worker's clock agrees with the web server's) within this
#: long after its ``recorded_at``: re-checks look that far back before ``attributed_at``, so a
#: click whose transaction was still open while the attribution read the messages is not
#: missed. Such a conversion is re-checked once more, to the same result.
REPORT_COMMIT_MARGIN = timedelta(seconds=60)

#: A batch that loses a race with a profile merge (the profile it read was deleted under it)
#: is retried this many times at once; otherwise the next run picks it up.
BATCH_RETRIES = 2

#: PostgreSQL's SQLSTATE of a REPEATABLE READ transaction that lost to a concurrent one.
SERIALIZATION_FAILURE = "40001"

#: The condition of the partial index oc_msg_history_engagement, as its migration says it.
ENGAGEMENT_REPORTS = ATTRIBUTION_REPORT_STATUSES

#: The one AttributionState row.
STATE_PK = 1


@dataclass(frozen=True)
class Touch:
    """One kind of engagement that can give a message an order, in order of precedence."""

    kind: str  # AttributionModel value
    rank: int  # lower wins
    status: str  # MessageStatusChange.status that reports it
    window: timedelta
    channels: tuple[str, ...] | None = None  # None: any channel
    #: Channels (of ``channels``) whose ``sent`` report also counts: their backend reports
    #: no deliveries, so the provider accepting the message is the delivery.
    sent_channels: tuple[str, ...] = ()


def _window(name: str) -> timedelta:
    value = getattr(app_settings, name)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigurationError(
            f"OMNICHANNEL[{name!r}] must be a number of seconds >= 0, not {value!r}"
        )
    return timedelta(seconds=value)


def delivery_channels() -> tuple[str, ...]:
    """Channels whose deliveries can win an order: ATTRIBUTION_DELIVERY_CHANNELS, or when it
    is None the configured channels whose backend reports no opens."""
    configured = app_settings.ATTRIBUTION_DELIVERY_CHANNELS
    if configured is None:
        from ..channels.registry import get_channels

        return tuple(name for name, channel in get_channels().items() if not channel.reports_opens)
    if isinstance(configured, str) or not all(isinstance(name, str) for name in configured):
        raise ConfigurationError(
            "OMNICHANNEL['ATTRIBUTION_DELIVERY_CHANNELS'] must be None or a list of channel "
            f"names, not {configured!r}"
        )
    return tuple(configured)


def sent_counts_channels(names: Sequence[str]) -> tuple[str, ...]:
    """Those of ``names`` whose backend reports no deliveries (``reports_deliveries``):
    their ``sent`` report counts as the delivery. A name no channel is configured under
    counts ``delivered`` reports only (the system check warns about it)."""
    from ..channels.registry import get_channel

    counted = []
    for name in names:
        try:
            channel = get_channel(name)
        except ConfigurationError:  # not configured, or another's bad settings: not ours
            continue
        if not channel.reports_deliveries:
            counted.append(name)
    return tuple(counted)


@dataclass(frozen=True)
class AttributionRules:
    """The model and windows of one run, read from the settings once."""

    model: str
    click_window: timedelta
    open_window: timedelta
    delivery_window: timedelta
    delivery_channels: tuple[str, ...]
    sent_channels: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls) -> AttributionRules:
        model = app_settings.ATTRIBUTION_MODEL
        if model not in MODELS:
            raise ConfigurationError(
                f"OMNICHANNEL['ATTRIBUTION_MODEL'] must be one of {list(MODELS)}, not {model!r}"
            )
        channels = delivery_channels()
        return cls(
            model=model,
            click_window=_window("ATTRIBUTION_CLICK_WINDOW"),
            open_window=_window("ATTRIBUTION_OPEN_WINDOW"),
            delivery_window=_window("ATTRIBUTION_DELIVERY_WINDOW"),
            delivery_channels=channels,
            sent_channels=sent_counts_channels(channels),
        )

    @property
    def touches(self) -> list[Touch]:
        """The engagements this model counts, strongest first; empty windows count nothing."""
        touches = [Touch(AttributionModel.CLICK, 1, MessageStatus.CLICKED, self.click_window)]
        if self.model == LAST_TOUCH:
            touches.append(Touch(AttributionModel.OPEN, 2, MessageStatus.OPENED, self.open_window))
            if self.delivery_channels:
                touches.append(
                    Touch(
                        AttributionModel.DELIVERY,
                        3,
                        MessageStatus.DELIVERED,
                        self.delivery_window,
                        self.delivery_channels,
                        self.sent_channels,
                    )
                )
        return [touch for touch in touches if touch.window > timedelta(0)]

    @property
    def longest_window(self) -> timedelta:
        return max((touch.window for touch in self.touches), default=timedelta(0))

    @property
    def sent_touch(self) -> Touch | None:
        """The delivery touch when some of its channels count ``sent`` reports."""
        for touch in self.touches:
            if touch.sent_channels:
                return touch
        return None


@dataclass
class AttributionResult:
    """What one run did."""

    attributed: int = 0  #: new orders given a conversion (including model "none")
    rechecked: int = 0  #: conversions recomputed after a late report or a merge
    changed: int = 0  #: of those, how many now have another message or engagement
    batches: int = 0
    failed_batches: int = 0  #: batches that lost a race with a merge; the next run redoes them

    def as_dict(self) -> dict[str, int]:
        return {
            "attributed": self.attributed,
            "rechecked": self.rechecked,
            "changed": self.changed,
            "batches": self.batches,
            "failed_batches": self.failed_batches,
        }


# --- SQL ------------------------------------------------------------------------------------
#
# Built as text because an INSERT ... SELECT with window functions is beyond the ORM; table
# names come from the models, values are parameters, and the one piece of date arithmetic
# (order time minus a window) is the backend's own (a Python function on SQLite, which
# compares dates as text in the format Django stores them).


class _Sql:
    """SQL text and its parameters, kept in the order they appear."""

    def __init__(self, text: str = "", params: Iterable[Any] = ()) -> None:
        self.text = text
        self.params = list(params)

    def __add__(self, other: _Sql | str) -> _Sql:
        if isinstance(other, str):
            return _Sql(self.text + other, self.params)
        return _Sql(self.text + other.text, self.params + other.params)

    @classmethod
    def join(cls, separator: str, parts: Sequence[_Sql]) -> _Sql:
        joined = _Sql()
        for index, part in enumerate(parts):
            joined = joined + (separator if index else "") + part
        return joined


def _table(model: type[models.Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _placeholders(values: Sequence[Any]) -> str:
    return ", ".join(["%s"] * len(values))


def _minus(column: str, window: timedelta) -> _Sql:
    """``column - window`` in the backend's own date arithmetic."""
    if connection.vendor == "postgresql":
        # A number of seconds, not days: an interval's days are calendar days, whose length
        # depends on the session's time zone (23 or 25 hours across a DST change).
        return _Sql(f"({column} - make_interval(secs => %s))", [window.total_seconds()])
    expression = connection.ops.combine_duration_expression("-", [column, "%s"])
    return _Sql(expression, [models.DurationField().get_db_prep_value(window, connection)])


def _kind_case(rank_column: str, rules: AttributionRules) -> str:
    """The AttributionModel value of a touch rank (NULL: no touch -> "none")."""
    whens = " ".join(f"WHEN {touch.rank} THEN '{touch.kind}'" for touch in rules.touches)
    if not whens:
        return f"'{AttributionModel.NONE}'"
    return f"CASE {rank_column} {whens} ELSE '{AttributionModel.NONE}' END"


def _orders(where: _Sql, rules: AttributionRules) -> _Sql:
    """Derived table of the order events matching ``where`` (on alias ``e``), each with the
    start of every window."""
    columns = _Sql(
        "e.id AS event_id, e.profile_id AS profile_id, e.occurred_at AS ordered_at, "
        "e.order_id AS order_id, e.amount AS amount, e.currency AS currency"
    )
    for touch in rules.touches:
        columns = columns + ", " + _minus("e.occurred_at", touch.window) + f" AS {touch.kind}_from"
    if rules.touches:
        columns = columns + ", " + _minus("e.occurred_at", rules.longest_window) + " AS first_from"
    return (
        _Sql("SELECT ")
        + columns
        + f" FROM {_table(Event)} e WHERE e.type = %s AND e.profile_id IS NOT NULL AND ("
        + _Sql("", [EventType.ORDER_PLACED])
        + where
        + ")"
        # SQLite would flatten this table into the joins below and compute each window start
        # (a Python function there) once per report compared instead of once per order: a
        # LIMIT keeps it a table of its own.
        + (" LIMIT -1" if connection.vendor == "sqlite" else "")
    )


def _touch_condition(touch: Touch) -> _Sql:
    """A report ``h`` of message ``m`` is this touch of order ``o``: its kind, on the touch's
    channels, within the touch's window before the order."""
    condition = _Sql(f"(h.occurred_at >= o.{touch.kind}_from AND h.occurred_at < o.ordered_at AND ")
    reported = _Sql("h.status = %s", [touch.status])
    if touch.channels is not None:
        reported = reported + _Sql(
            f" AND m.channel IN ({_placeholders(touch.channels)})", touch.channels
        )
    if touch.sent_channels:
        reported = (
            _Sql("(")
            + reported
            + _Sql(
                f") OR (h.status = %s AND m.channel IN ({_placeholders(touch.sent_channels)}))",
                [MessageStatus.SENT, *touch.sent_channels],
            )
        )
    return condition + "(" + reported + "))"


def _touches(orders: _Sql, rules: AttributionRules, *, keep_untouched: bool = False) -> _Sql:
    """Each message of the order's profile that touched it, once, by its strongest engagement
    within the windows: the order's columns (event_id, profile_id, ordered_at, order_id,
    amount, currency), the message's (message_id, campaign_id, step_id, variant_id, channel),
    touch_rank and touched_at. With ``keep_untouched``, an order no message touched is one row
    without message, rank or time.

    The times come from the message's reports (``MessageStatusChange``), not from its
    ``clicked_at``/``opened_at`` columns (the first report of each): per kind, the latest
    report strictly before the order and within its window, so a message clicked a week ago
    and again an hour before the order counts by the recent click.
    """
    touches = rules.touches
    conditions = [_touch_condition(touch) for touch in touches]
    latest = [
        _Sql("MAX(CASE WHEN ") + condition + f" THEN h.occurred_at END) AS {touch.kind}_at"
        for touch, condition in zip(touches, conditions, strict=True)
    ]
    order_columns = (
        "o.event_id, o.profile_id, o.ordered_at, o.order_id, o.amount, o.currency, "
        "m.id, m.campaign_id, m.step_id, m.variant_id, m.channel"
    )
    join = "LEFT JOIN" if keep_untouched else "JOIN"
    grouped = (
        _Sql(
            "SELECT o.event_id AS event_id, o.profile_id AS profile_id, "
            "o.ordered_at AS ordered_at, o.order_id AS order_id, o.amount AS amount, "
            "o.currency AS currency, m.id AS message_id, m.campaign_id AS campaign_id, "
            "m.step_id AS step_id, m.variant_id AS variant_id, m.channel AS channel, "
        )
        + _Sql.join(", ", latest)
        + " FROM ("
        + orders
        # Plain joins, message then report (a parenthesised "m JOIN h" is materialised whole
        # by SQLite); the range on occurred_at uses the history's (message, occurred_at) index.
        # With ``keep_untouched`` both are LEFT joins: an order keeps one row per message of
        # its profile (or one without message), untouched rows have no kind's time.
        + f") o {join} {_table(Message)} m ON m.profile_id = o.profile_id "
        f"{join} {_table(MessageStatusChange)} h ON h.message_id = m.id "
        "AND h.occurred_at >= o.first_from AND h.occurred_at < o.ordered_at AND ("
        + _Sql.join(" OR ", conditions)
        + f") GROUP BY {order_columns}"
    )
    rank = " ".join(f"WHEN g.{touch.kind}_at IS NOT NULL THEN {touch.rank}" for touch in touches)
    latest_times = [f"g.{touch.kind}_at" for touch in touches]
    # In rank order: the strongest kind's time (SQLite's COALESCE wants two arguments).
    touched_at = f"COALESCE({', '.join(latest_times)})" if len(touches) > 1 else latest_times[0]
    touched = f"{touched_at} IS NOT NULL"
    # A message that did not touch the order (kept by the LEFT joins) shows as no message.
    message_columns = ", ".join(
        f"CASE WHEN {touched} THEN g.{column} END AS {column}"
        for column in ("message_id", "campaign_id", "step_id", "variant_id", "channel")
    )
    return (
        _Sql(
            "SELECT g.event_id AS event_id, g.profile_id AS profile_id, "
            "g.ordered_at AS ordered_at, g.order_id AS order_id, g.amount AS amount, "
            f"g.currency AS currency, CASE {rank} END AS touch_rank, "
            f"{touched_at} AS touched_at, {message_columns} FROM ("
        )
        + grouped
        + ") g"
    )


#: A NULL of the id columns' type.
_NO_ID = "CASE WHEN 1 = 0 THEN o.event_id END"


def _attributions(where: _Sql, rules: AttributionRules) -> _Sql:
    """The Conversion columns (except id and attributed_at) of the orders matching ``where``.

    One pass: each order joined (LEFT) to the messages that touched it, and the winner picked
    per order by ROW_NUMBER: strongest kind, then latest, then the newer message (higher id).
    No second join of the orders to their winners: a planner may run such a join's windowed
    side once per order.
    """
    untouched = f"'{AttributionModel.NONE}'"
    if not rules.touches:
        return (
            _Sql(
                "SELECT o.event_id AS order_event_id, o.order_id AS order_id, "
                "o.profile_id AS profile_id, o.ordered_at AS ordered_at, "
                "COALESCE(o.amount, 0) AS revenue, o.currency AS currency, "
                # Typed NULLs (a bare NULL is text to PostgreSQL in an UPDATE ... FROM).
                f"{untouched} AS model, {_NO_ID} AS message_id, {_NO_ID} AS campaign_id, "
                f"{_NO_ID} AS step_id, {_NO_ID} AS variant_id, '' AS channel, "
                "CASE WHEN 1 = 0 THEN o.ordered_at END AS touched_at FROM ("
            )
            + _orders(where, rules)
            + ") o"
        )
    return (
        _Sql(
            "SELECT order_event_id, order_id, profile_id, ordered_at, revenue, currency, model, "
            "message_id, campaign_id, step_id, variant_id, channel, touched_at FROM ("
            "SELECT t.event_id AS order_event_id, t.order_id AS order_id, "
            "t.profile_id AS profile_id, t.ordered_at AS ordered_at, "
            "COALESCE(t.amount, 0) AS revenue, t.currency AS currency, "
            f"{_kind_case('t.touch_rank', rules)} AS model, t.message_id AS message_id, "
            "t.campaign_id AS campaign_id, t.step_id AS step_id, t.variant_id AS variant_id, "
            "COALESCE(t.channel, '') AS channel, t.touched_at AS touched_at, "
            "ROW_NUMBER() OVER (PARTITION BY t.event_id "
            # Untouched rows last (NULL sorts first on SQLite, last on PostgreSQL).
            "ORDER BY COALESCE(t.touch_rank, 99), t.touched_at DESC, t.message_id DESC) "
            "AS place FROM ("
        )
        + _touches(_orders(where, rules), rules, keep_untouched=True)
        + ") t) ranked WHERE place = 1"
    )


#: Conversion columns written by the attribution, in the order of _attributions.
ATTRIBUTED_COLUMNS = (
    "order_event_id",
    "order_id",
    "profile_id",
    "ordered_at",
    "revenue",
    "currency",
    "model",
    "message_id",
    "campaign_id",
    "step_id",
    "variant_id",
    "channel",
    "touched_at",
)

#: What a re-check compares and updates (the order's own columns never change).
RECHECKED_FIELDS = (
    "profile_id",
    "model",
    "message_id",
    "campaign_id",
    "step_id",
    "variant_id",
    "channel",
    "touched_at",
)


def _insert_conversions(where: _Sql, rules: AttributionRules, *, now: datetime) -> int:
    columns = ", ".join(ATTRIBUTED_COLUMNS)
    sql = (
        _Sql(
            f"INSERT INTO {_table(Conversion)} ({columns}, attributed_at) SELECT a.*, %s FROM (",
            [_datetime_param(now)],
        )
        + _attributions(where, rules)
        # The WHERE keeps SQLite from reading ON CONFLICT as a join's ON (its documented
        # ambiguity of INSERT ... SELECT with an upsert clause).
        + ") a WHERE 1 = 1 ON CONFLICT (order_event_id) DO NOTHING"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql.text, sql.params)
        return max(cursor.rowcount, 0)


def _insert_influences(where: _Sql, conversions_where: _Sql, rules: AttributionRules) -> int:
    """Influences of the orders matching ``where`` whose conversion matches
    ``conversions_where`` (alias ``c``): every touch but the winner's."""
    if not rules.touches:
        return 0
    sql = (
        _Sql(
            f"INSERT INTO {_table(Influence)} (conversion_id, message_id, model, touched_at) "
            f"SELECT c.id, t.message_id, {_kind_case('t.touch_rank', rules)}, t.touched_at FROM ("
        )
        + _touches(_orders(where, rules), rules)
        + f") t JOIN {_table(Conversion)} c ON c.order_event_id = t.event_id "
        "WHERE c.message_id <> t.message_id AND ("
        + conversions_where
        + ") ON CONFLICT (conversion_id, message_id) DO NOTHING"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql.text, sql.params)
        return max(cursor.rowcount, 0)


# --- new orders -----------------------------------------------------------------------------


def _pending_orders(*, now: datetime, since: datetime | None) -> models.QuerySet[Event]:
    """Order events with a profile and no conversion yet, placed by ``now`` (and since)."""
    pending = Event.objects.filter(
        type=EventType.ORDER_PLACED, profile__isnull=False, occurred_at__lte=now
    ).filter(~Exists(Conversion.objects.filter(order_event=OuterRef("pk"))))
    if since is not None:
        pending = pending.filter(occurred_at__gte=since)
    return pending


def _datetime_param(value: datetime) -> Any:
    return models.DateTimeField().get_db_prep_value(value, connection)


def _new_orders_where(
    first_id: int, last_id: int, *, now: datetime, since: datetime | None
) -> _Sql:
    where = _Sql(
        "e.id >= %s AND e.id <= %s AND e.occurred_at <= %s AND NOT EXISTS ("
        f"SELECT 1 FROM {_table(Conversion)} done WHERE done.order_event_id = e.id)",
        [first_id, last_id, _datetime_param(now)],
    )
    if since is not None:
        where = where + _Sql(" AND e.occurred_at >= %s", [_datetime_param(since)])
    return where


@contextmanager
def _one_snapshot() -> Iterator[None]:
    """A transaction whose statements all read the same data: on PostgreSQL REPEATABLE READ
    (a new batch's two INSERTs read the messages twice; under READ COMMITTED a report
    committed between them could make the influences disagree with the conversions). Inside
    an outer transaction (a rebuild's batch, a test) it is that transaction's level."""
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        yield


def _attribute_new_batch(
    first_id: int, last_id: int, *, rules: AttributionRules, now: datetime, since: datetime | None
) -> int:
    """Conversions and influences for the pending orders with ids in [first_id, last_id]."""
    with _one_snapshot():
        created = _insert_conversions(
            _new_orders_where(first_id, last_id, now=now, since=since), rules, now=now
        )
        if created:
            # This run's conversions of the range: the orders just attributed.
            just_made = _Sql(
                "c.attributed_at = %s AND c.order_event_id >= %s AND c.order_event_id <= %s",
                [_datetime_param(now), first_id, last_id],
            )
            in_range = _Sql("e.id >= %s AND e.id <= %s", [first_id, last_id])
            _insert_influences(in_range, just_made, rules)
    return created


# --- re-checks ------------------------------------------------------------------------------


def _scan_start(*, now: datetime) -> datetime | None:
    """Reports recorded from here on may be late for some conversion: the bookmark minus the
    commit margin, or before the first bookmark the oldest conversion's computation (a report
    recorded before any conversion was computed was seen by it). None: nothing to re-check."""
    state = AttributionState.objects.order_by("pk").first()
    checked_until = state.reports_checked_until if state is not None else None
    if checked_until is None:
        checked_until = Conversion.objects.aggregate(first=Min("attributed_at"))["first"]
        if checked_until is None:
            return None
    return min(checked_until, now) - REPORT_COMMIT_MARGIN


def _late_report_candidates(
    *, rules: AttributionRules, scan_from: datetime, since: datetime | None, after: int, limit: int
) -> list[int]:
    """The next ``limit`` order event ids (above ``after``) whose conversion was computed
    before a report about one of the person's messages was recorded, where the report
    happened within the windows before the order: a late click, open or delivery."""
    conversion = "message__profile__conversions__"

    def scan(reports: models.QuerySet[MessageStatusChange]) -> list[int]:
        late = reports.filter(
            recorded_at__gte=scan_from,
            # One filter() call: these all name the same conversion (one join).
            **{
                f"{conversion}ordered_at__gt": F("occurred_at"),
                f"{conversion}ordered_at__lte": F("occurred_at") + rules.longest_window,
                f"{conversion}attributed_at__lte": F("recorded_at") + REPORT_COMMIT_MARGIN,
                f"{conversion}order_event_id__gt": after,
                **({f"{conversion}ordered_at__gte": since} if since is not None else {}),
            },
        )
        return list(
            late.values_list(f"{conversion}order_event_id", flat=True)
            .order_by(f"{conversion}order_event_id")
            .distinct()[:limit]
        )

    found: set[int] = set()
    statuses = sorted({touch.status for touch in rules.touches})
    if statuses:
        # Through the partial index of engagement reports by recorded_at: its condition
        # repeated word for word, which SQLite needs to use it.
        engagement = MessageStatusChange.objects.filter(status__in=ENGAGEMENT_REPORTS)
        found.update(scan(engagement.filter(status__in=statuses)))
    sent_touch = rules.sent_touch
    if sent_touch is not None:
        # Sent reports of channels that report no deliveries: our own, recorded as the
        # provider accepts a message; late only by a send run's length.
        found.update(
            scan(
                MessageStatusChange.objects.filter(status__in=ENGAGEMENT_REPORTS).filter(
                    status=MessageStatus.SENT, message__channel__in=sent_touch.sent_channels
                )
            )
        )
    return sorted(found)[:limit]


def _merge_candidates(
    *, scan_from: datetime, since: datetime | None, after: int, limit: int
) -> list[int]:
    """The next ``limit`` order event ids (above ``after``) whose profile absorbed another
    one after the conversion was computed (the merge brought that person's messages)."""
    conversion = "survivor__conversions__"
    merged = ProfileMerge.objects.filter(
        created_at__gte=scan_from,
        **{
            f"{conversion}attributed_at__lte": F("created_at") + REPORT_COMMIT_MARGIN,
            f"{conversion}order_event_id__gt": after,
            **({f"{conversion}ordered_at__gte": since} if since is not None else {}),
        },
    )
    return list(
        merged.values_list(f"{conversion}order_event_id", flat=True)
        .order_by(f"{conversion}order_event_id")
        .distinct()[:limit]
    )


def _recheck_candidates(
    *, rules: AttributionRules, scan_from: datetime, since: datetime | None, limit: int
) -> Iterator[list[int]]:
    """Order event ids of the conversions a late report or a merge may have changed, in
    batches of at most ``limit``, by keyset on the order event id (never all in memory)."""
    after = 0
    while True:
        both = _late_report_candidates(
            rules=rules, scan_from=scan_from, since=since, after=after, limit=limit
        ) + _merge_candidates(scan_from=scan_from, since=since, after=after, limit=limit)
        # Each list holds the next ``limit`` of its kind: the first ``limit`` of their union
        # are the next ``limit`` overall.
        batch = sorted(set(both))[:limit]
        if not batch:
            return
        yield batch
        after = batch[-1]


def _recheck_batch(event_ids: list[int], *, rules: AttributionRules, now: datetime) -> int:
    """Recompute the conversions of ``event_ids`` in place; return how many changed."""
    with _one_snapshot():
        # The statements below name the conversions by primary key: a plan that does not
        # depend on the table's statistics (stale right after a backfill filled it).
        pks = list(
            Conversion.objects.filter(order_event_id__in=event_ids).values_list("pk", flat=True)
        )
        if not pks:
            return 0
        where = _Sql(f"e.id IN ({_placeholders(event_ids)})", event_ids)
        table = _table(Conversion)
        assignments = ", ".join(f"{name} = a.{name}" for name in RECHECKED_FIELDS)
        # Only rows whose answer changed are written (NULL-safe "differs" on both backends).
        differs = " OR ".join(
            f"({table}.{name} <> a.{name} OR ({table}.{name} IS NULL) <> (a.{name} IS NULL))"
            for name in RECHECKED_FIELDS
        )
        update = (
            _Sql(f"UPDATE {table} SET {assignments} FROM (")
            + _attributions(where, rules)
            + _Sql(
                f") a WHERE {table}.order_event_id = a.order_event_id "
                f"AND {table}.id IN ({_placeholders(pks)}) AND ({differs})",
                pks,
            )
        )
        with connection.cursor() as cursor:
            cursor.execute(update.text, update.params)
            changed = max(cursor.rowcount, 0)
        # attributed_at is also "checked at": the reports that led here are now older.
        Conversion.objects.filter(pk__in=pks).update(attributed_at=now)
        Influence.objects.filter(conversion_id__in=pks).delete()
        _insert_influences(where, _Sql(f"c.id IN ({_placeholders(pks)})", pks), rules)
    return changed


# --- runs -----------------------------------------------------------------------------------


def _with_retries(work: Callable[[], int], result: AttributionResult, what: str) -> int | None:
    """Run one batch; a lost race with a merge (IntegrityError) is retried, then left for the
    next run. Returns the batch's count, or None when it gave up."""
    for attempt in range(BATCH_RETRIES + 1):
        try:
            return work()
        except IntegrityError:
            logger.info("attribution: %s hit a concurrent change (try %s)", what, attempt + 1)
        except OperationalError as exc:
            # REPEATABLE READ: another run committed the same orders' conversions after this
            # batch's snapshot (PostgreSQL's serialization failure); the retry sees them.
            cause = exc.__cause__
            code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
            if code != SERIALIZATION_FAILURE:
                raise
            logger.info("attribution: %s met a concurrent run (try %s)", what, attempt + 1)
    result.failed_batches += 1
    logger.warning("attribution: %s left for the next run", what)
    return None


def _mark_reports_checked(until: datetime) -> None:
    """Move the re-check bookmark (after a complete, unrestricted, successful pass)."""
    if not AttributionState.objects.filter(pk=STATE_PK).update(reports_checked_until=until):
        try:
            with transaction.atomic():
                AttributionState.objects.create(pk=STATE_PK, reports_checked_until=until)
        except IntegrityError:  # a concurrent run created it first
            AttributionState.objects.filter(pk=STATE_PK).update(reports_checked_until=until)


def _recheck(
    result: AttributionResult,
    *,
    rules: AttributionRules,
    now: datetime,
    since: datetime | None,
    batch_size: int,
    max_batches: int | None,
) -> None:
    """The re-check pass; the bookmark moves to ``now`` only when it saw every candidate."""
    scan_from = _scan_start(now=now)
    if scan_from is None:
        if since is None:
            # No conversion yet: every report to come is late for the ones the new-order
            # pass is about to compute only if recorded after now (minus the margin).
            _mark_reports_checked(now)
        return
    complete = True
    for chunk in _recheck_candidates(
        rules=rules, scan_from=scan_from, since=since, limit=batch_size
    ):
        if max_batches is not None and result.batches >= max_batches:
            complete = False
            break
        changed = _with_retries(
            partial(_recheck_batch, chunk, rules=rules, now=now),
            result,
            f"re-check of {len(chunk)} orders",
        )
        result.batches += 1
        if changed is None:
            complete = False
        else:
            result.rechecked += len(chunk)
            result.changed += changed
    if complete and since is None:
        _mark_reports_checked(now)


def attribute_orders(
    now: datetime | None = None,
    *,
    since: datetime | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
) -> AttributionResult:
    """Attribute every order not attributed yet and re-check those a late report or a merge
    may have changed; idempotent. ``since`` limits both to orders placed since then;
    ``max_batches`` bounds the batches of one run, re-checks first (the rest waits for the
    next run)."""
    now = now or timezone.now()
    batch_size = app_settings.ATTRIBUTION_BATCH_SIZE if batch_size is None else batch_size
    if batch_size < 1:
        raise ConfigurationError(f"the attribution batch size must be >= 1, not {batch_size}")
    rules = AttributionRules.from_settings()
    result = AttributionResult()

    _recheck(
        result, rules=rules, now=now, since=since, batch_size=batch_size, max_batches=max_batches
    )

    after = 0
    while max_batches is None or result.batches < max_batches:
        ids = list(
            _pending_orders(now=now, since=since)
            .filter(pk__gt=after)
            .order_by("pk")
            .values_list("pk", flat=True)[:batch_size]
        )
        if not ids:
            break
        first_id, last_id = ids[0], ids[-1]
        created = _with_retries(
            partial(_attribute_new_batch, first_id, last_id, rules=rules, now=now, since=since),
            result,
            f"orders {first_id}..{last_id}",
        )
        result.attributed += created or 0
        result.batches += 1
        after = last_id
    if result.attributed or result.changed:
        logger.info("attribution: %s", result.as_dict())
    return result


def rebuild_attribution(
    now: datetime | None = None,
    *,
    since: datetime | None = None,
    batch_size: int | None = None,
) -> AttributionResult:
    """Attribute every order (placed since ``since``) again from scratch, with the current
    settings: batch by batch, each batch's old conversions are dropped and new ones written in
    one transaction, so reports never see an order without its conversion."""
    now = now or timezone.now()
    batch_size = app_settings.ATTRIBUTION_BATCH_SIZE if batch_size is None else batch_size
    if batch_size < 1:
        raise ConfigurationError(f"the attribution batch size must be >= 1, not {batch_size}")
    rules = AttributionRules.from_settings()
    result = AttributionResult()
    orders = Event.objects.filter(
        type=EventType.ORDER_PLACED, profile__isnull=False, occurred_at__lte=now
    )
    if since is not None:
        orders = orders.filter(occurred_at__gte=since)
    after = 0
    while True:
        ids = list(
            orders.filter(pk__gt=after).order_by("pk").values_list("pk", flat=True)[:batch_size]
        )
        if not ids:
            break
        first_id, last_id = ids[0], ids[-1]
        created = _with_retries(
            partial(_rebuild_batch, ids, rules=rules, now=now, since=since),
            result,
            f"rebuild of orders {first_id}..{last_id}",
        )
        result.attributed += created or 0
        result.batches += 1
        after = last_id
    return result


def _rebuild_batch(
    ids: list[int], *, rules: AttributionRules, now: datetime, since: datetime | None
) -> int:
    """Drop the conversions of the order events ``ids`` and attribute them again, at once."""
    with _one_snapshot():
        old = Conversion.objects.filter(order_event_id__in=ids)
        Influence.objects.filter(conversion__in=old).delete()
        old.delete()
        return _attribute_new_batch(ids[0], ids[-1], rules=rules, now=now, since=since)
