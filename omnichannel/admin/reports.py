"""Campaign reports in the admin: an overview of all campaigns and one page per campaign.

The pages hang under the campaign admin (``CampaignAdmin.get_urls`` adds ``report_urls``):

* ``campaign/reports/``: every campaign over a date range, the channels, the cascade's mix,
  and the customers by RFM group, devices and sources;
* ``campaign/<id>/report/``: one campaign by step, channel and variant, its funnel and daily
  series as charts, the cascade's mix and the holdout / variant uplift.

Each table is also a CSV (``?format=csv&table=<name>``) built from the same rows, totals
included. Staff need the view permission on campaigns; the customer tables also need the view
permission on profiles. The figures come from ``analytics.reports`` (SQL aggregation).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.http import urlencode
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from ..analytics import charts
from ..analytics.reports import (
    EARLIEST_DAY,
    LATEST_DAY,
    MAX_PERIOD_DAYS,
    CampaignReport,
    CustomerOverview,
    OverviewReport,
    PeopleRow,
    Period,
    Row,
    campaign_report,
    customer_overview,
    overview_report,
    people_total,
)
from ..campaigns.models import Campaign
from ..conf import app_settings
from ..profiles.models import CustomerProfile
from .display import EMPTY, admin_url

#: Days a report covers when no dates are given.
DEFAULT_DAYS = 30


# --- the date range ---------------------------------------------------------------------------


class ReportPeriodForm(forms.Form):
    """The report's date range (GET); both dates optional, defaulting to the last 30 days."""

    start = forms.DateField(
        label=_("From"),
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        help_text=_("First day (UTC) of the period, YYYY-MM-DD."),
    )
    end = forms.DateField(
        label=_("To"),
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        help_text=_("Last day (UTC), included."),
    )

    def __init__(self, data: Any = None, *, today: date) -> None:
        self.today = today
        super().__init__(data)

    def _clean_day(self, name: str) -> date | None:
        day = self.cleaned_data.get(name)
        if day is not None and not EARLIEST_DAY <= day <= LATEST_DAY:
            # Far dates would overflow the period's arithmetic; no shop has orders there.
            raise forms.ValidationError(
                gettext("Choose a day from %(first)s to %(last)s.")
                % {"first": EARLIEST_DAY.isoformat(), "last": LATEST_DAY.isoformat()}
            )
        return day

    def clean_start(self) -> date | None:
        return self._clean_day("start")

    def clean_end(self) -> date | None:
        return self._clean_day("end")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.errors:
            return cleaned
        end = cleaned.get("end") or self.today
        start = cleaned.get("start") or max(end - timedelta(days=DEFAULT_DAYS - 1), EARLIEST_DAY)
        if end < start:
            raise forms.ValidationError(
                gettext("The end date (%(end)s) is before the start date (%(start)s).")
                % {"end": end.isoformat(), "start": start.isoformat()}
            )
        if (end - start).days + 1 > MAX_PERIOD_DAYS:
            raise forms.ValidationError(
                gettext("A report covers at most %(days)s days; choose a shorter period.")
                % {"days": MAX_PERIOD_DAYS}
            )
        try:
            cleaned["period"] = Period(start, end)
        except ValueError as exc:  # e.g. a clock (today) outside the days a report covers
            raise forms.ValidationError(str(exc)) from None
        return cleaned


# --- tables: one definition serves the page and the CSV ---------------------------------------


def _percent(value: float | None) -> str:
    return EMPTY if value is None else f"{value * 100:,.1f}%"


def _fraction(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _money(value: Decimal | None) -> str:
    return EMPTY if value is None else f"{value:,.2f}"


def _small_money(value: Decimal | None) -> str:
    return EMPTY if value is None else f"{value:,.4f}"


def _money_csv(value: Decimal | None) -> str:
    # Fixed places: SQLite's sums drop trailing zeros, PostgreSQL's keep them.
    return "" if value is None else f"{value:.2f}"


def _per_unit_csv(value: Decimal | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _small_money_csv(value: Decimal | None) -> str:
    return "" if value is None else f"{value:.5f}"


def _count(value: int) -> str:
    return f"{value:,}"


def _plain(value: Any) -> str:
    return "" if value is None else str(value)


@dataclass(frozen=True)
class Column:
    """A column: its header, how to get the value from a row, and how to show it."""

    name: str
    title: str
    value: Callable[[Any], Any]
    show: Callable[[Any], str] = _plain
    export: Callable[[Any], str] = _plain
    numeric: bool = True
    #: The URL the cell links to on the page (row -> URL or None).
    link: Callable[[Any], str | None] | None = None
    #: The CSV columns standing for this one (e.g. an interval's two bounds, each a number
    #: a spreadsheet can compute with); empty: the column itself.
    csv_columns: Sequence[Column] = ()

    def in_csv(self) -> Sequence[Column]:
        """The columns this one is exported as."""
        return self.csv_columns or (self,)


@dataclass
class Table:
    """A report table: rows of any kind and the columns that read them; CSV and page alike."""

    name: str
    title: str
    columns: Sequence[Column]
    rows: Sequence[Any]
    total: Any = None
    description: str = ""
    csv_url: str = ""

    def header(self) -> list[dict[str, Any]]:
        return [{"title": c.title, "numeric": c.numeric, "name": c.name} for c in self.columns]

    def _cells(self, row: Any) -> list[dict[str, Any]]:
        return [
            {
                "text": c.show(c.value(row)),
                "numeric": c.numeric,
                "name": c.name,
                "url": c.link(row) if c.link else None,
            }
            for c in self.columns
        ]

    def body(self) -> list[list[dict[str, Any]]]:
        return [self._cells(row) for row in self.rows]

    def footer(self) -> list[dict[str, Any]] | None:
        return None if self.total is None else self._cells(self.total)

    def csv_rows(self) -> Iterable[list[str]]:
        columns = [part for column in self.columns for part in column.in_csv()]
        yield [c.name for c in columns]
        for row in [*self.rows, *([self.total] if self.total is not None else [])]:
            yield [_csv_cell(c, row) for c in columns]


def _csv_cell(column: Column, row: Any) -> str:
    text = column.export(column.value(row))
    # Numeric columns export plain numbers (or nothing): a "-0.01" is data, never a formula.
    return text if column.numeric else csv_safe(text)


def csv_safe(text: str) -> str:
    """``text`` as a CSV text cell a spreadsheet will not run: a cell starting with = + - @
    (or a tab or CR) is a formula to it, so a campaign named "=HYPERLINK(...)" gets a
    leading ``'``."""
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


def _label_column(title: str, link: Callable[[Any], str | None] | None = None) -> Column:
    return Column("label", title, lambda row: row.label, numeric=False, link=link)


def metric_columns(
    first_title: str, link: Callable[[Any], str | None] | None = None
) -> list[Column]:
    """The columns of a per-campaign / step / channel / variant table."""
    return [
        _label_column(first_title, link),
        Column("sent", _("Sent"), lambda r: r.sent, _count),
        Column("delivered", _("Delivered"), lambda r: r.delivered, _count),
        Column("opened", _("Opened"), lambda r: r.opened, _count),
        Column("clicked", _("Clicked"), lambda r: r.clicked, _count),
        Column("ctr", _("CTR"), lambda r: r.ctr, _percent, _fraction),
        Column("conversions", _("Conversions"), lambda r: r.conversions, _count),
        Column(
            "conversion_rate", _("Conv. rate"), lambda r: r.conversion_rate, _percent, _fraction
        ),
        Column("revenue", _("Revenue"), lambda r: r.revenue, _money, _money_csv),
        Column(
            "revenue_per_notification",
            _("Revenue / sent"),
            lambda r: r.revenue_per_notification,
            _small_money,
            _per_unit_csv,
        ),
        Column("cost", _("Cost"), lambda r: r.cost, _small_money, _small_money_csv),
        Column("roi", _("ROI"), lambda r: r.roi, _percent, _fraction),
    ]


def _mix_columns() -> list[Column]:
    return [
        _label_column(_("Campaign")),
        Column("first_sent", _("1st step: sent"), lambda m: m.first.sent, _count),
        Column("first_conversions", _("1st: conversions"), lambda m: m.first.conversions, _count),
        Column("first_revenue", _("1st: revenue"), lambda m: m.first.revenue, _money, _money_csv),
        Column(
            "first_cost", _("1st: cost"), lambda m: m.first.cost, _small_money, _small_money_csv
        ),
        Column("later_sent", _("Later: sent"), lambda m: m.later.sent, _count),
        Column("later_conversions", _("Later: conversions"), lambda m: m.later.conversions, _count),
        Column("later_revenue", _("Later: revenue"), lambda m: m.later.revenue, _money, _money_csv),
        Column(
            "later_cost", _("Later: cost"), lambda m: m.later.cost, _small_money, _small_money_csv
        ),
        Column(
            "later_revenue_share",
            _("Added by later steps"),
            lambda m: m.added_revenue_share,
            _percent,
            _fraction,
        ),
        Column("later_roi", _("Later steps' ROI"), lambda m: m.later.roi, _percent, _fraction),
    ]


def _people_columns(first_title: str) -> list[Column]:
    return [
        _label_column(first_title),
        Column("people", _("Customers"), lambda r: r.people, _count),
        Column("orders", _("Orders"), lambda r: r.orders, _count),
        Column("spent", _("Spent"), lambda r: r.spent, _money, _money_csv),
        Column(
            "average_spent", _("Spent per customer"), lambda r: r.average_spent, _money, _money_csv
        ),
    ]


def _daily_columns() -> list[Column]:
    return [
        Column(
            "day",
            _("Day"),
            lambda d: d.day,
            lambda day: day.isoformat() if isinstance(day, date) else gettext("Total"),
            lambda day: day.isoformat() if isinstance(day, date) else "total",
            numeric=False,
        ),
        Column("sent", _("Sent"), lambda d: d.sent, _count),
        Column("opened", _("Opened"), lambda d: d.opened, _count),
        Column("clicked", _("Clicked"), lambda d: d.clicked, _count),
        Column("conversions", _("Conversions"), lambda d: d.conversions, _count),
        Column("revenue", _("Revenue"), lambda d: d.revenue, _money, _money_csv),
    ]


def funnel_caption() -> str:
    """Why the funnel's last stage is a share of sent only."""
    return gettext(
        "Sent to clicked are messages, each stage within the one before. Converted counts "
        "orders, by the day they were placed: push and SMS orders need no click and an order "
        "may follow a message of an earlier day, so it can exceed the clicks; it is a share of "
        "sent only."
    )


def _funnel_columns() -> list[Column]:
    return [
        _label_column(_("Stage")),
        Column("count", _("Messages / orders"), lambda s: s.count, _count),
        Column(
            "of_previous", _("Of the stage before"), lambda s: s.of_previous, _percent, _fraction
        ),
        Column("of_sent", _("Of sent"), lambda s: s.of_sent, _percent, _fraction),
    ]


def _label_of(value: Any) -> str:
    return str(getattr(value, "label", value))


@dataclass(frozen=True)
class Verdict:
    """A comparison in words: ``outcome`` is "better", "worse" or "none"."""

    outcome: str
    text: str
    note: str = ""


def verdict(comparison: Any) -> Verdict:
    """Which arm of ``comparison`` did better, from its ``winner`` (the significantly better
    arm, or None) when the uplift module gives one, else from the sign of ``diff`` when the
    difference is significant."""
    arm, baseline = _label_of(comparison.arm), _label_of(comparison.baseline)
    if hasattr(comparison, "winner"):
        winner = comparison.winner
        if winner is None:
            outcome = "none"
        elif winner is comparison.baseline:
            outcome = "worse"
        else:
            outcome = "better"
    elif comparison.significant and comparison.diff:
        outcome = "better" if comparison.diff > 0 else "worse"
    else:
        outcome = "none"
    if outcome == "better":
        text = gettext("%(arm)s beats %(baseline)s (significant)")
    elif outcome == "worse":
        text = gettext("%(arm)s does worse than %(baseline)s (significant)")
    else:
        text = gettext("%(arm)s against %(baseline)s: no significant difference")
    return Verdict(outcome, text % {"arm": arm, "baseline": baseline}, comparison.note or "")


def several_variants_note(report: Any) -> str:
    """A warning when several variants of a step are each compared with its control: every
    comparison is another chance of a difference that is only luck."""
    per_control: dict[int, int] = {}
    for comparison in report.comparisons:
        if getattr(comparison.arm, "kind", "") == "variant":
            key = id(comparison.baseline)
            per_control[key] = per_control.get(key, 0) + 1
    most = max(per_control.values(), default=0)
    if most < 2:
        return ""
    confidence = float(report.confidence)
    return gettext(
        "Several variants are compared with the same control (up to %(count)s): each "
        'comparison is another chance of a "significant" difference that is only luck. '
        "With %(count)s comparisons at %(confidence)s%% confidence, the chance of at least one "
        "such false alarm is about %(chance)s%%, not %(single)s%%; treat a lone significant "
        "variant with caution and confirm it with a new test."
    ) % {
        "count": most,
        "confidence": f"{confidence * 100:g}",
        "chance": f"{(1 - confidence**most) * 100:.0f}",
        "single": f"{(1 - confidence) * 100:g}",
    }


def _uplift_tables(report: Any) -> list[Table]:
    arms = Table(
        "uplift_arms",
        gettext("Arms: holdout, treated and variants"),
        [
            _label_column(_("Arm")),
            Column("kind", _("Kind"), lambda a: a.kind, numeric=False),
            Column("people", _("People"), lambda a: a.people, _count),
            Column("converted", _("Converted"), lambda a: a.converted, _count),
            Column(
                "conversion_rate",
                _("Conversion rate"),
                lambda a: a.conversion_rate,
                _percent,
                _fraction,
            ),
            Column("revenue", _("Revenue"), lambda a: a.revenue, _money, _money_csv),
            Column(
                "revenue_per_person",
                _("Revenue / person"),
                lambda a: a.revenue_per_person,
                _small_money,
                _per_unit_csv,
            ),
        ],
        list(report.arms),
    )

    def points(value: Any) -> str:
        return EMPTY if value is None else f"{float(value) * 100:+.1f} pt"

    def interval(low: Any, high: Any, show: Callable[[Any], str]) -> str:
        return EMPTY if low is None or high is None else f"{show(low)} .. {show(high)}"

    def signed_money(value: Any) -> str:
        return EMPTY if value is None else f"{Decimal(value):+,.2f}"

    comparisons = Table(
        "uplift",
        gettext("Uplift against the baseline"),
        [
            Column("arm", _("Arm"), lambda c: _label_of(c.arm), numeric=False),
            Column("baseline", _("Baseline"), lambda c: _label_of(c.baseline), numeric=False),
            Column("diff", _("Conversion rate diff."), lambda c: c.diff, points, _fraction),
            Column(
                "ci",
                _("Confidence interval"),
                lambda c: (c.ci_low, c.ci_high),
                lambda v: interval(*v, points),
                csv_columns=(
                    Column("ci_low", _("Interval from"), lambda c: c.ci_low, export=_fraction),
                    Column("ci_high", _("Interval to"), lambda c: c.ci_high, export=_fraction),
                ),
            ),
            Column("relative", _("Relative"), lambda c: c.relative, _percent, _fraction),
            Column(
                "p_value",
                _("p-value"),
                lambda c: c.p_value,
                lambda v: EMPTY if v is None else f"{v:.3f}",
                lambda v: "" if v is None else f"{v:.6f}",
            ),
            Column(
                "significant",
                _("Significant"),
                lambda c: c.significant,
                lambda v: gettext("yes") if v else gettext("no"),
                lambda v: "yes" if v else "no",
                numeric=False,
            ),
            Column(
                "revenue_diff",
                _("Revenue / person diff."),
                lambda c: c.revenue_diff,
                signed_money,
                _money_csv,
            ),
            Column(
                "revenue_ci",
                _("Revenue diff. interval"),
                lambda c: (c.revenue_ci_low, c.revenue_ci_high),
                lambda v: interval(*v, signed_money),
                csv_columns=(
                    Column(
                        "revenue_ci_low",
                        _("Revenue interval from"),
                        lambda c: c.revenue_ci_low,
                        export=_money_csv,
                    ),
                    Column(
                        "revenue_ci_high",
                        _("Revenue interval to"),
                        lambda c: c.revenue_ci_high,
                        export=_money_csv,
                    ),
                ),
            ),
            Column("note", _("Note"), lambda c: c.note, numeric=False),
        ],
        list(report.comparisons),
    )
    return [arms, comparisons]


# --- charts -----------------------------------------------------------------------------------


def campaign_charts(report: CampaignReport) -> list[Any]:
    """The funnel and the two daily charts of a campaign report, as inline SVG."""
    funnel = report.funnel
    dates = [row.day for row in report.daily]
    return [
        charts.bar_chart(
            gettext("Funnel: %(name)s") % {"name": report.campaign.name},
            [(stage.label, stage.count) for stage in funnel],
            value_label=gettext("Messages (converted: orders)"),
            notes=[
                gettext("%(share)s of sent") % {"share": _percent(stage.of_sent)}
                if stage.key != "sent"
                else ""
                for stage in funnel
            ],
        ),
        charts.line_chart(
            gettext("Messages and conversions per day"),
            dates,
            [
                charts.Series(gettext("Sent"), [row.sent for row in report.daily]),
                charts.Series(gettext("Opened"), [row.opened for row in report.daily]),
                charts.Series(gettext("Clicked"), [row.clicked for row in report.daily]),
                charts.Series(gettext("Conversions"), [row.conversions for row in report.daily]),
            ],
            y_label=gettext("Count"),
            x_label=gettext("Day (UTC)"),
        ),
        charts.line_chart(
            gettext("Revenue per day"),
            dates,
            [charts.Series(gettext("Revenue"), [row.revenue for row in report.daily])],
            y_label=gettext("Revenue"),
            x_label=gettext("Day (UTC)"),
        ),
    ]


# --- table sets -------------------------------------------------------------------------------


def overview_tables(
    report: OverviewReport, link: Callable[[Any], str | None] | None = None
) -> list[Table]:
    """The overview page's campaign tables; ``link(row)``: a campaign row's report URL."""
    return [
        Table(
            "campaigns",
            gettext("Campaigns"),
            metric_columns(gettext("Campaign"), link),
            report.campaigns,
            report.totals,
        ),
        Table(
            "channels",
            gettext("Channels (all campaigns)"),
            metric_columns(gettext("Channel")),
            report.channels,
            report.channel_totals,
        ),
        Table(
            "mix",
            gettext("Channel mix: the first step against what the cascade's later steps added"),
            _mix_columns(),
            report.mix,
            report.mix_totals,
        ),
    ]


def customer_tables(overview: CustomerOverview) -> list[Table]:
    """The customer overview's tables (every profile as it stands now)."""

    def table(name: str, title: str, first: str, rows: list[PeopleRow]) -> Table:
        return Table(name, title, _people_columns(first), rows, people_total(rows))

    return [
        table("rfm", gettext("Customers by RFM group"), gettext("RFM group"), overview.rfm),
        table("devices", gettext("Customers by devices"), gettext("Devices"), overview.devices),
        table(
            "sources",
            gettext("Customers by sources (web shop, app, store)"),
            gettext("Sources used"),
            overview.sources,
        ),
    ]


def campaign_tables(report: CampaignReport) -> list[Table]:
    """The campaign page's tables, uplift included when there is one."""
    tables = [
        Table(
            "steps",
            gettext("By step"),
            metric_columns(gettext("Step")),
            report.steps,
            report.totals,
        ),
        Table(
            "channels",
            gettext("By channel"),
            metric_columns(gettext("Channel")),
            report.channels,
            report.totals,
        ),
        Table(
            "variants",
            gettext("By variant"),
            metric_columns(gettext("Step / variant")),
            report.variants,
            report.totals,
        ),
        Table(
            "funnel",
            gettext("Funnel"),
            _funnel_columns(),
            report.funnel,
            description=funnel_caption(),
        ),
        Table(
            "daily",
            gettext("Per day"),
            _daily_columns(),
            report.daily,
            report.daily_totals,
        ),
        Table(
            "mix",
            gettext("Channel mix: the first step against what the later steps added"),
            _mix_columns(),
            [report.mix],
        ),
    ]
    if report.uplift is not None:
        tables += _uplift_tables(report.uplift)
    return tables


# --- views ------------------------------------------------------------------------------------


@dataclass
class ReportViews:
    """The report views of one campaign admin (its site, permissions and URL names)."""

    model_admin: admin.ModelAdmin
    today: Callable[[], date] = field(default=lambda: timezone.now().date())

    @property
    def urls(self) -> list[URLPattern]:
        info = Campaign._meta.app_label, Campaign._meta.model_name
        wrap = self.model_admin.admin_site.admin_view
        return [
            path(
                "reports/",
                wrap(self.overview_view),
                name="{}_{}_reports".format(*info),
            ),
            path(
                "reports/customers/",
                wrap(self.customers_view),
                name="{}_{}_reports_customers".format(*info),
            ),
            path(
                "<path:object_id>/report/",
                wrap(self.campaign_view),
                name="{}_{}_report".format(*info),
            ),
        ]

    def _check(self, request: HttpRequest, obj: Campaign | None = None) -> None:
        if not self.model_admin.has_view_or_change_permission(request, obj):
            raise PermissionDenied

    def _period_form(self, request: HttpRequest) -> ReportPeriodForm:
        today = self.today()
        if "start" in request.GET or "end" in request.GET:
            return ReportPeriodForm(request.GET, today=today)
        default = Period.last_days(DEFAULT_DAYS, today=today)
        return ReportPeriodForm({"start": default.start, "end": default.end}, today=today)

    def _context(self, request: HttpRequest, title: str, **extra: Any) -> dict[str, Any]:
        opts = self.model_admin.opts
        return {
            **self.model_admin.admin_site.each_context(request),
            "title": title,
            "opts": opts,
            "app_label": opts.app_label,
            "has_view_permission": self.model_admin.has_view_permission(request),
            "cost_currency": app_settings.COST_CURRENCY,
            **extra,
        }

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        """Every campaign over the period: campaigns, channels, the cascade's mix."""
        self._check(request)
        form = self._period_form(request)
        tables: list[Table] = []
        report = None
        if form.is_valid():
            period = form.cleaned_data["period"]
            report = overview_report(period)
            site = self.model_admin.admin_site.name
            query = "?" + urlencode({"start": period.start, "end": period.end})

            def report_link(row: Row) -> str | None:
                url = admin_url(Campaign, "report", row.key, site_name=site) if row.key else None
                return url and url + query

            tables = overview_tables(report, report_link)
        if request.GET.get("format") == "csv":
            return self._csv(request, form, tables, "campaigns")
        self._add_csv_urls(request, form, tables)
        context = self._context(
            request,
            gettext("Campaign reports"),
            form=form,
            report=report,
            tables=tables,
            currency_warning=currency_warning(report.other_currencies) if report else "",
            customers_url=admin_url(
                Campaign, "reports_customers", site_name=self.model_admin.admin_site.name
            )
            if self._can_see_customers(request)
            else None,
        )
        request.current_app = self.model_admin.admin_site.name
        return TemplateResponse(
            request, "admin/omnichannel/reports/overview.html", context, status=_status(form)
        )

    def _can_see_customers(self, request: HttpRequest) -> bool:
        opts = CustomerProfile._meta
        return request.user.has_perm(f"{opts.app_label}.view_{opts.model_name}")

    def customers_view(self, request: HttpRequest) -> HttpResponse:
        """The customers as they stand now, by RFM group, devices and sources (no period).

        A page of its own: it scans every profile, which the campaign figures do not need.
        """
        self._check(request)
        if not self._can_see_customers(request):
            raise PermissionDenied
        tables = customer_tables(customer_overview())
        for table in tables:
            table.csv_url = "?" + urlencode({"format": "csv", "table": table.name})
        if request.GET.get("format") == "csv":
            name = request.GET.get("table", "")
            chosen = next((table for table in tables if table.name == name), None)
            if chosen is None:
                return _unknown_table(name, tables)
            return _csv_response(chosen, f"customers-{chosen.name}-{self.today().isoformat()}")
        site = self.model_admin.admin_site.name
        context = self._context(
            request,
            gettext("Customers now"),
            tables=tables,
            reports_url=admin_url(Campaign, "reports", site_name=site),
        )
        request.current_app = site
        return TemplateResponse(request, "admin/omnichannel/reports/customers.html", context)

    def campaign_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """One campaign over the period: tables, charts, mix and uplift."""
        # Not the admin's get_object: the campaign list's queryset counts every campaign's
        # messages, seconds on a large message table.
        try:
            campaign = Campaign._default_manager.get(pk=object_id)
        except (Campaign.DoesNotExist, ValueError, ValidationError):
            raise Http404(gettext("No such campaign.")) from None
        self._check(request, campaign)
        form = self._period_form(request)
        report: CampaignReport | None = None
        tables: list[Table] = []
        chart_svgs: list[Any] = []
        if form.is_valid():
            wants_csv = request.GET.get("format") == "csv"
            table = request.GET.get("table", "")
            # The uplift has queries of its own: only run them when shown or exported.
            needs_uplift = not wants_csv or table.startswith("uplift")
            report = campaign_report(campaign, form.cleaned_data["period"], uplift=needs_uplift)
            tables = campaign_tables(report)
            if not wants_csv:
                chart_svgs = campaign_charts(report)
        if request.GET.get("format") == "csv":
            return self._csv(request, form, tables, f"campaign-{campaign.pk}")
        self._add_csv_urls(request, form, tables)
        site = self.model_admin.admin_site.name
        context = self._context(
            request,
            gettext("Report: %(name)s") % {"name": campaign},
            form=form,
            campaign=campaign,
            original=campaign,
            report=report,
            tables=tables,
            charts=chart_svgs,
            uplift_how=_uplift_how(report),
            verdicts=[verdict(c) for c in report.uplift.comparisons]
            if report is not None and report.uplift is not None
            else [],
            variants_note=several_variants_note(report.uplift)
            if report is not None and report.uplift is not None
            else "",
            currency_warning=currency_warning(report.other_currencies) if report else "",
            change_url=admin_url(Campaign, "change", campaign.pk, site_name=site),
            reports_url=admin_url(Campaign, "reports", site_name=site),
        )
        request.current_app = site
        return TemplateResponse(
            request, "admin/omnichannel/reports/campaign.html", context, status=_status(form)
        )

    def _add_csv_urls(
        self, request: HttpRequest, form: ReportPeriodForm, tables: Iterable[Table]
    ) -> None:
        period = form.cleaned_data.get("period") if form.is_valid() else None
        dates = {"start": period.start.isoformat(), "end": period.end.isoformat()} if period else {}
        for table in tables:
            table.csv_url = "?" + urlencode({**dates, "format": "csv", "table": table.name})

    def _csv(
        self, request: HttpRequest, form: ReportPeriodForm, tables: list[Table], stem: str
    ) -> HttpResponse:
        if not form.is_valid():
            return HttpResponseBadRequest(
                "\n".join(_form_errors(form)) + "\n", content_type="text/plain; charset=utf-8"
            )
        name = request.GET.get("table", "")
        chosen = next((table for table in tables if table.name == name), None)
        if chosen is None:
            return _unknown_table(name, tables)
        period = form.cleaned_data["period"]
        return _csv_response(
            chosen, f"{stem}-{chosen.name}-{period.start.isoformat()}-{period.end.isoformat()}"
        )


def _unknown_table(name: str, tables: list[Table]) -> HttpResponse:
    known = ", ".join(table.name for table in tables)
    return HttpResponseBadRequest(
        gettext("Unknown table %(name)r; this report has: %(known)s.")
        % {"name": name, "known": known}
        + "\n",
        content_type="text/plain; charset=utf-8",
    )


def _csv_response(table: Table, filename: str) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}.csv"'
    csv.writer(response).writerows(table.csv_rows())
    return response


def _uplift_how(report: CampaignReport | None) -> str:
    if report is None or report.uplift is None:
        return ""
    window = report.campaign.measure_window
    hours = int(window.total_seconds() // 3600) if window else 0
    length = (
        ngettext("%(n)s day", "%(n)s days", hours // 24) % {"n": hours // 24}
        if hours % 24 == 0
        else ngettext("%(n)s hour", "%(n)s hours", hours) % {"n": hours}
    )
    return gettext(
        "People enrolled in the period, each followed for the campaign's conversion window "
        "(%(window)s) from their enrollment, or for a variant of a later step from when they "
        "reached that step; every order of theirs counts, attributed or not, so the holdout "
        "shows what the campaign changed. Intervals at %(confidence)s%% confidence."
    ) % {"window": length, "confidence": f"{report.uplift.confidence * 100:g}"}


def currency_warning(currencies: Sequence[str]) -> str:
    """The warning for revenue that has orders in ``currencies`` besides the costs' one."""
    if not currencies:
        return ""
    return gettext(
        "Revenue mixes currencies: orders in %(others)s are added to those in %(cost)s (the "
        "currency of costs) without conversion, so revenue figures add unlike amounts. ROI is "
        "not shown for rows with revenue in another currency than %(cost)s."
    ) % {"others": ", ".join(currencies), "cost": app_settings.COST_CURRENCY}


def _status(form: ReportPeriodForm) -> int:
    # Bad dates are the visitor's error: the page explains it, with 400 for scripts.
    return 200 if form.is_valid() else 400


def _form_errors(form: forms.Form) -> list[str]:
    errors = []
    for name, messages in form.errors.items():
        prefix = "" if name == "__all__" else f"{form.fields[name].label}: "
        errors.extend(prefix + message for message in messages)
    return errors


def report_urls(model_admin: admin.ModelAdmin) -> list[URLPattern]:
    """URL patterns of the reports, for ``CampaignAdmin.get_urls``."""
    return ReportViews(model_admin).urls
