"""Campaigns on PostgreSQL: scenarios measured on N generated profiles (default 1,000,000).

Run by bench/run.py (``--only campaigns``) on a fresh copy of the migrated template database;
usable by hand on any migrated database of the demo shop::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/omnichannel_bench_x DJANGO_DEBUG=0 \\
        python bench/campaigns.py --profiles 1000000 [--only fanout] [--json out.json]

Scenarios live in ``SCENARIOS`` (name -> function of the parsed arguments, returning its
figures); ``--only`` picks some. Each prints its headline against a baseline measured in the
same run, and the data they share is generated once, set-based in SQL (INSERT ... SELECT
generate_series): people with an email identity and a marketing consent for email, half of them
with an account whose email holds the same address (in other case), a third with a best send
hour, a tenth in another time zone.

``fanout``: a mass campaign (email, then SMS three days later) fanned out to all N people:
seconds until its Message rows exist (target 60 s for a million). Baselines, same run: the same
fan-out on 100,000 of them (scaling), and with history rows; the Python path
(reachability_many + bulk_create per batch of 500) on a sample; the engine's tick taking a
sample enrolled at step 0 (what a mass campaign costs without the set-based first step). Before
the main run, a few people are made unreachable the ways SQL must notice (withdrawn consent,
suppressed address, capped by two recent contacts, quiet hours in New York), and afterwards a
sample of the created messages is checked against ``reachability()``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import django_env, run_script, setup_django

FANOUT_TARGET_S = 60.0
BASELINE_PROFILES = 100_000
SAMPLE = 5_000
PYTHON_BATCH = 500
#: The fan-out's "now": a daytime hour (quiet hours are 21:00-08:00 in the shop's UTC).
NOW = datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0)
#: NOW as a SQL literal, for the generators (segments_bench.insert_select's expressions take
#: no parameters of their own).
NOW_SQL = f"'{NOW.isoformat()}'::timestamptz"

#: Scenario name -> function(args) -> figures. A second scenario (the engine's tick) is added
#: by registering another function with @scenario("tick").
SCENARIOS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {}


def scenario(name: str) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    def register(func: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        SCENARIOS[name] = func
        return func

    return register


def log(message: str = "") -> None:
    print(message, flush=True)


# --- run by bench/run.py ------------------------------------------------------------------------


def run_campaigns(admin, template: str, sizes: list[int], args) -> list[dict]:
    """bench/run.py's part: per size a fresh copy of the template, this script in a subprocess."""
    log("\n== Campaigns: a mass campaign fanned out (enrollments and first messages) ==")
    results = []
    for size in sizes:
        name = admin.create(admin.name("campaigns"), template=template)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "campaigns.json"
            log(f"  {size:,} profiles: generating data, then measuring (load {_load():.1f})...")
            options = [f"--profiles={size}", f"--json={out}"]
            if getattr(args, "campaign_scenarios", None):
                options.append(f"--only={args.campaign_scenarios}")
            run_script(
                "campaigns.py",
                options,
                django_env(admin.url_of(name), omnichannel=True),
                label=f"campaigns {size}",
            )
            result = json.loads(out.read_text())
        admin.drop(name)
        results.append(result)
        report(result)
    return results


def _load() -> float:
    return os.getloadavg()[0]


def report(result: dict[str, Any]) -> None:
    data = result["data"]
    log(
        f"    data: {data['profiles']:,} profiles ({data['users']:,} with an account), "
        f"generated in {data['generate_s']:.0f} s"
    )
    for name, figures in result["scenarios"].items():
        REPORTS.get(name, _report_raw)(figures)


def _report_raw(figures: dict[str, Any]) -> None:
    log(f"    {json.dumps(figures, default=str)[:2000]}")


def _report_fanout(f: dict[str, Any]) -> None:
    main, base, py, engine = f["main"], f["baseline"], f["python_sample"], f["engine_sample"]
    verdict = "met" if main["seconds"] <= FANOUT_TARGET_S else "MISSED"
    log(
        f"    fan-out of {main['audience']:,} people: {main['seconds']:.1f} s until the message "
        f"rows exist (target {FANOUT_TARGET_S:.0f} s: {verdict}); {main['messages']:,} messages "
        f"= {main['messages'] / main['seconds']:,.0f}/s, {main['enrollments']:,} enrollments, "
        f"{main['left_to_engine']:,} left to the engine"
    )
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in main["phases_s"].items())
    log(
        f"      {main['chunks']} chunks of {main['chunk_size']:,} profile ids (median "
        f"{main['chunk_median_s']:.2f} s), "
        + (f"phases: {phases}" if phases else "one statement each")
    )
    if main.get("backend_cpu_s") is not None:
        log(
            f"      PostgreSQL backend CPU meanwhile: {main['backend_cpu_s']:.1f} s "
            f"({main['backend_cpu_s'] / main['seconds']:.0%} of the wall time; the rest is "
            f"waiting: I/O, and other work on a busy machine)"
        )
    left = ", ".join(f"{k} {v:,}" for k, v in main["left_breakdown"].items())
    log(f"      left to the engine: {left}")
    scale = main["audience"] / base["audience"]
    log(
        f"    baseline, same fan-out on {base['audience']:,} people: {base['seconds']:.1f} s "
        f"({base['messages']:,} messages); {scale:.0f}x the people took "
        f"{main['seconds'] / base['seconds']:.1f}x the time"
    )
    hist = f.get("baseline_history")
    if hist:
        log(
            f"    with the history rows the engine writes (EnrollmentLog, status changes), "
            f"{hist['audience']:,} people: {hist['seconds']:.1f} s = "
            f"{hist['seconds'] / base['seconds']:.2f}x the fan-out without them"
        )
    log(
        f"    baseline, Python path (reachability_many + bulk_create, batches of {PYTHON_BATCH}) "
        f"on {py['audience']:,} people: {py['seconds']:.1f} s = {py['per_s']:,.0f} people/s; "
        f"at that rate {main['audience']:,} would take {main['audience'] / py['per_s']:,.0f} s = "
        f"{main['audience'] / py['per_s'] / main['seconds']:.0f}x the set-based fan-out"
    )
    log(
        f"    baseline, engine tick on {engine['audience']:,} enrolled at step 0: "
        f"{engine['seconds']:.1f} s = {engine['per_s']:,.0f} enrollments/s ({engine['sent']:,} "
        f"messages); at that rate {main['audience']:,} would take "
        f"{main['audience'] / engine['per_s']:,.0f} s = "
        f"{main['audience'] / engine['per_s'] / main['seconds']:.0f}x the set-based fan-out"
    )
    check = f["check"]
    status = "ok" if not check["problems"] else f"{len(check['problems'])} PROBLEMS"
    log(
        f"    check: {check['checked']:,} sampled messages against reachability(): {status}"
        + "".join(f"\n      {p}" for p in check["problems"][:10])
    )


REPORTS: dict[str, Callable[[dict[str, Any]], None]] = {"fanout": _report_fanout}


# --- data ---------------------------------------------------------------------------------------


def generate(n: int, seed: float) -> dict[str, Any]:
    """N profiles with email identities and consents; half with accounts; best hours; zones.

    ``orders_count`` marks the baselines' audiences: 2 for the first SAMPLE ids, 1 up to
    BASELINE_PROFILES, 0 after.
    """
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from segments_bench import insert_select

    from omnichannel.profiles.models import Consent, CustomerProfile, Identity
    from omnichannel.segments.models import EngagementScore

    User = get_user_model()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute("SELECT setseed(%s)", [seed])
        cursor.execute(
            "CREATE TEMP TABLE bench_c AS SELECT i AS id, random() AS r_user, random() AS r_hour,"
            " random() AS r_hour2, random() AS r_zone, random() AS r_lang "
            "FROM generate_series(1, %s) i",
            [n],
        )
        step = time.perf_counter()
        users = insert_select(
            User,
            {
                "id": "id",
                "username": "'u' || id",
                "email": "' P' || id || '@Bench.example'",  # normalised: p<id>@bench.example
                "password": "'!'",
                "date_joined": f"{NOW_SQL} - interval '400 days'",
            },
            "FROM bench_c WHERE r_user < .5",
            [],
        )
        timings["users"] = time.perf_counter() - step
        step = time.perf_counter()
        insert_select(
            CustomerProfile,
            {
                "id": "id",
                "uuid": "md5('bench' || id)::uuid",
                "user": "CASE WHEN r_user < .5 THEN id END",
                "first_name": "'First' || id",
                "language": "CASE WHEN r_lang < .1 THEN 'de' ELSE '' END",
                "time_zone": "CASE WHEN r_zone < .05 THEN 'America/New_York' "
                "WHEN r_zone < .1 THEN 'Asia/Tokyo' ELSE '' END",
                "created_at": f"{NOW_SQL} - interval '500 days'",
                "orders_count": f"CASE WHEN id <= {SAMPLE} THEN 2 "
                f"WHEN id <= {BASELINE_PROFILES} THEN 1 ELSE 0 END",
            },
            "FROM bench_c",
            [],
        )
        timings["profiles"] = time.perf_counter() - step
        step = time.perf_counter()
        insert_select(
            Identity,
            {
                "profile": "id",
                "kind": "'email'",
                "value": "'p' || id || '@bench.example'",
                "created_at": f"{NOW_SQL} - interval '300 days'",
            },
            "FROM bench_c",
            [],
        )
        insert_select(
            Consent,
            {
                "profile": "id",
                "channel": "'email'",
                "purpose": "'marketing'",
                "granted": "true",
                "source": "'web'",
                "created_at": f"{NOW_SQL} - interval '200 days'",
            },
            "FROM bench_c",
            [],
        )
        timings["identities_consents"] = time.perf_counter() - step
        insert_select(
            EngagementScore,
            {
                "profile": "id",
                "preferred_channel": "'email'",
                "best_hour": "CASE WHEN r_hour2 < .1 THEN floor(r_hour2 * 240)::int "
                "ELSE 8 + floor(r_hour2 * 13)::int END",
                "engaged_messages": "3",
                "computed_at": NOW_SQL,
            },
            "FROM bench_c WHERE r_hour < .3",
            [],
        )
        for model in (User, CustomerProfile, Identity, Consent):
            table = model._meta.db_table
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
                f"(SELECT max(id) FROM {table}))"
            )
        cursor.execute("DROP TABLE bench_c")
    _analyze()
    return {
        "profiles": n,
        "users": users,
        "generate_s": time.perf_counter() - started,
        "generate_phases_s": timings,
    }


def make_unreachable(n: int, seed: float) -> dict[str, int]:
    """The people SQL must leave to the engine: withdrawn consent (1 %), a suppressed address
    (1 %), two recent marketing contacts (2 %: the day's cap of 2)."""
    from django.db import connection, transaction
    from segments_bench import insert_select

    from omnichannel.channels.models import Message, Suppression
    from omnichannel.profiles.models import Consent

    counts = {}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute("SELECT setseed(%s)", [seed])
        cursor.execute(
            "CREATE TEMP TABLE bench_u AS SELECT i AS id, random() AS r "
            "FROM generate_series(1, %s) i",
            [n],
        )
        counts["withdrawn"] = insert_select(
            Consent,
            {
                "profile": "id",
                "channel": "'email'",
                "purpose": "'marketing'",
                "granted": "false",
                "source": "'web'",
                "created_at": f"{NOW_SQL} - interval '10 days'",
            },
            "FROM bench_u WHERE r < .01",
            [],
        )
        counts["suppressed"] = insert_select(
            Suppression,
            {
                "channel": "'email'",
                "address": "'p' || id || '@bench.example'",
                "reason": "'bounced'",
                "created_at": NOW_SQL,
            },
            "FROM bench_u WHERE r >= .01 AND r < .02",
            [],
        )
        counts["capped"] = (
            insert_select(
                Message,
                {
                    "uuid": "md5('recent' || id || '-' || k)::uuid",
                    "profile": "id",
                    "channel": "'email'",
                    "purpose": "'marketing'",
                    "address": "'p' || id || '@bench.example'",
                    "status": "'delivered'",
                    "status_changed_at": f"{NOW_SQL} - k * interval '2 hours'",
                    "created_at": f"{NOW_SQL} - k * interval '2 hours'",
                },
                "FROM bench_u CROSS JOIN generate_series(1, 2) k WHERE r >= .02 AND r < .04",
                [],
            )
            // 2
        )
        cursor.execute("DROP TABLE bench_u")
    _analyze()
    return counts


def _analyze() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")


def _truncate_campaign_rows() -> None:
    """Remove what the baselines wrote (messages, enrollments and their history)."""
    from django.db import connection

    from omnichannel.campaigns.models import Enrollment, EnrollmentLog
    from omnichannel.channels.models import Message, MessageStatusChange, OutboxEntry

    tables = [m._meta.db_table for m in (EnrollmentLog, MessageStatusChange, OutboxEntry)]
    tables += [Message._meta.db_table, Enrollment._meta.db_table]
    with connection.cursor() as cursor:
        # CASCADE: suppressions point at messages; none exist yet when this runs.
        cursor.execute(f"TRUNCATE {', '.join(tables)} CASCADE")


# --- fanout -------------------------------------------------------------------------------------


def _segment(name: str, min_orders: int | None):
    from omnichannel.segments.models import Segment

    children = []
    if min_orders is not None:
        children = [{"type": "orders_count", "negate": False, "params": {"min": min_orders}}]
    rules = {"op": "all", "negate": False, "children": children}
    return Segment.objects.create(name=name, rules=rules)


def _campaign(name: str, audience, **fields):
    from omnichannel.campaigns.models import Campaign, CampaignKind, CampaignStatus, Step

    campaign = Campaign.objects.create(
        name=name,
        kind=CampaignKind.MASS,
        status=CampaignStatus.ACTIVE,
        audience=audience,
        **fields,
    )
    for position, (channel, wait) in enumerate(
        [("email", timedelta(0)), ("sms", timedelta(days=3))], start=1
    ):
        Step.objects.create(
            campaign=campaign,
            position=position,
            channel=channel,
            wait=wait,
            template="spring_sale",
            content={channel: {"subject.txt": "Spring sale", "body.txt": "Hello {{ first_name }}"}},
        )
    return campaign


class PhaseTimer:
    """Wraps functions of a module and adds up the seconds spent in each."""

    def __init__(self, module: Any, names: list[str]) -> None:
        self.module, self.seconds = module, dict.fromkeys(names, 0.0)
        self.calls: dict[str, list[float]] = {name: [] for name in names}
        self.saved = {name: getattr(module, name) for name in names}

    def __enter__(self) -> PhaseTimer:
        for name, func in self.saved.items():
            setattr(self.module, name, self._wrap(name, func))
        return self

    def _wrap(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                self.seconds[name] += spent
                self.calls[name].append(spent)

        return timed

    def __exit__(self, *exc: object) -> None:
        for name, func in self.saved.items():
            setattr(self.module, name, func)


def _fan_out_timed(campaign, *, history: bool = False) -> dict[str, Any]:
    from omnichannel.campaigns import fanout
    from omnichannel.campaigns.models import Enrollment
    from omnichannel.channels.models import Message

    phases = [
        "fan_out_chunk",
        "_insert_enrollments",
        "_insert_messages",
        "_advance_enrollments",
        "_insert_history",
    ]
    backend_cpu = _backend_cpu()
    with PhaseTimer(fanout, phases) as timer:
        start = time.perf_counter()
        enrolled = fanout.fan_out(campaign, now=NOW, history=history)
        seconds = time.perf_counter() - start
    backend_cpu_s = _backend_cpu() - backend_cpu if backend_cpu is not None else None
    messages = Message.objects.filter(campaign=campaign).count()
    chunks = timer.calls["fan_out_chunk"]
    return {
        "seconds": seconds,
        "audience": enrolled,
        "enrollments": Enrollment.objects.filter(campaign=campaign).count(),
        "messages": messages,
        "left_to_engine": Enrollment.objects.filter(campaign=campaign, step_position=0).count(),
        "chunks": len(chunks),
        "chunk_size": fanout.chunk_size(),
        "chunk_median_s": statistics.median(chunks) if chunks else 0.0,
        # CPU seconds of the PostgreSQL backend meanwhile: what the fan-out cost the server,
        # whatever else the machine was running (None when the server is not local).
        "backend_cpu_s": backend_cpu_s,
        # Only the portable path has phases; PostgreSQL does each chunk in one statement.
        "phases_s": {
            name.strip("_").replace("insert_", "").replace("_enrollments", ""): timer.seconds[name]
            for name in phases[1:]
            if timer.calls[name]
        },
    }


def _backend_cpu() -> float | None:
    """CPU seconds used so far by this connection's PostgreSQL backend (from /proc)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime, fields 14 and 15 of stat(5), counted after the ")" of the name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _python_path(campaign) -> dict[str, Any]:
    """What code without set-based SQL does: per batch of 500, load the people, ask the
    channel who it reaches (reachability_many), bulk_create enrollments, messages and their
    history."""
    from django.conf import settings
    from django.db import transaction

    from omnichannel.campaigns.models import (
        Enrollment,
        EnrollmentAction,
        EnrollmentLog,
        EnrollmentState,
    )
    from omnichannel.channels.models import Message, MessageStatus, MessageStatusChange
    from omnichannel.channels.registry import get_channel
    from omnichannel.profiles.models import CustomerProfile

    backend = get_channel("email")
    step = campaign.steps.get(position=1)
    second = campaign.steps.get(position=2)
    start = time.perf_counter()
    ids = list(campaign.audience.queryset(now=NOW).order_by("pk").values_list("pk", flat=True))
    for first in range(0, len(ids), PYTHON_BATCH):
        batch = ids[first : first + PYTHON_BATCH]
        with transaction.atomic():
            profiles = list(CustomerProfile.objects.filter(pk__in=batch).select_related("user"))
            reach = backend.reachability_many(profiles, campaign.purpose)
            Enrollment.objects.bulk_create(
                [
                    Enrollment(
                        campaign=campaign,
                        profile=p,
                        state=EnrollmentState.ACTIVE,
                        step_position=1 if reach[p.pk].ok else 0,
                        next_due_at=NOW + second.wait if reach[p.pk].ok else NOW,
                        last_message_at=NOW if reach[p.pk].ok else None,
                        enrolled_at=NOW,
                    )
                    for p in profiles
                ],
                ignore_conflicts=True,
            )
            enrollments = dict(
                Enrollment.objects.filter(campaign=campaign, profile_id__in=batch).values_list(
                    "profile_id", "pk"
                )
            )
            messages = Message.objects.bulk_create(
                [
                    Message(
                        profile=p,
                        campaign=campaign,
                        enrollment_id=enrollments[p.pk],
                        step=step,
                        channel=backend.name,
                        purpose=campaign.purpose,
                        address=reach[p.pk].address,
                        template=step.template,
                        language=p.language or settings.LANGUAGE_CODE,
                        tags=[f"campaign:{campaign.pk}"],
                        currency=backend.currency,
                        cost=backend.cost,
                        needs_render=True,
                        status=MessageStatus.QUEUED,
                        status_changed_at=NOW,
                        created_at=NOW,
                        queued_at=NOW,
                        next_attempt_at=NOW,
                    )
                    for p in profiles
                    if reach[p.pk].ok
                ]
            )
            MessageStatusChange.objects.bulk_create(
                [
                    MessageStatusChange(
                        message=m, status="queued", occurred_at=NOW, recorded_at=NOW
                    )
                    for m in messages
                ]
            )
            EnrollmentLog.objects.bulk_create(
                [
                    EnrollmentLog(enrollment_id=pk, at=NOW, action=EnrollmentAction.ENROLLED)
                    for pk in enrollments.values()
                ]
                + [
                    EnrollmentLog(
                        enrollment_id=m.enrollment_id,
                        at=NOW,
                        action=EnrollmentAction.SENT,
                        message=m,
                    )
                    for m in messages
                ]
            )
    seconds = time.perf_counter() - start
    return {"audience": len(ids), "seconds": seconds, "per_s": len(ids) / seconds}


def _engine_path(campaign) -> dict[str, Any]:
    """Enroll at step 0 only, then let the engine's tick create the messages."""
    from omnichannel.campaigns import fanout
    from omnichannel.campaigns.engine import tick

    enrolled = fanout.fan_out(campaign, now=NOW, direct_messages=False)
    start = time.perf_counter()
    sent = 0
    while True:
        result = tick(now=NOW, dispatch=False)
        sent += result.sent
        if not result.claimed:
            break
    seconds = time.perf_counter() - start
    return {"audience": enrolled, "seconds": seconds, "per_s": enrolled / seconds, "sent": sent}


def _check(campaign, size: int, seed: float) -> dict[str, Any]:
    """Compare a sample of the fan-out's messages with reachability(), and a sample of the
    people left at step 0 with reachability_many (they must be unreachable, capped, quiet, or
    an address SQL could not vouch for)."""
    from omnichannel.campaigns.models import Enrollment
    from omnichannel.channels.models import Message
    from omnichannel.channels.registry import get_channel

    rng = random.Random(seed)
    backend = get_channel("email")
    ids = list(
        Message.objects.filter(campaign=campaign).order_by("pk").values_list("pk", flat=True)
    )
    problems = []
    sample = rng.sample(ids, min(size, len(ids)))
    messages = Message.objects.filter(pk__in=sample).select_related("profile", "profile__user")
    profiles = [m.profile for m in messages]
    reach = backend.reachability_many(profiles, campaign.purpose)
    for message in messages:
        expected = backend.reachability(message.profile, campaign.purpose)
        if expected != reach[message.profile_id]:
            problems.append(f"profile {message.profile_id}: many {reach[message.profile_id]}")
        if not expected.ok or expected.address != message.address:
            problems.append(f"message {message.pk} to {message.address!r}: {expected}")
    left = list(
        Enrollment.objects.filter(campaign=campaign, step_position=0)
        .select_related("profile", "profile__user")
        .order_by("?")[:size]
    )
    left_reach = backend.reachability_many([e.profile for e in left], campaign.purpose)
    reasons: dict[str, int] = {}
    for enrollment in left:
        found = left_reach[enrollment.profile_id]
        key = found.reason.split(" (")[0] if found.reason else _why_left(enrollment.profile)
        reasons[key] = reasons.get(key, 0) + 1
    return {"checked": len(sample), "problems": problems, "left_sample": reasons}


def _why_left(profile) -> str:
    if profile.time_zone == "America/New_York":
        return "quiet hours (New York)"
    return "reachable, held back (caps)"


@scenario("fanout")
def bench_fanout(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    sample = _segment("Bench sample", 2)
    baseline = _segment("Bench baseline", 1)
    everyone = _segment("Bench everyone", None)
    log(f"    Python path on the sample ({SAMPLE:,})...")
    python_campaign = _campaign("Python path", sample)
    figures["python_sample"] = _python_path(python_campaign)
    # Launched, so the engine's tick below does not start a fan-out of it.
    type(python_campaign).objects.filter(pk=python_campaign.pk).update(launched_at=NOW)
    log(f"    engine tick on the sample ({SAMPLE:,})...")
    figures["engine_sample"] = _engine_path(_campaign("Engine path", sample))
    _truncate_campaign_rows()
    _analyze()
    size = min(BASELINE_PROFILES, args.profiles)
    log(f"    fan-out of {size:,} (baseline)...")
    figures["baseline"] = _fan_out_timed(_campaign("Baseline fan-out", baseline))
    _truncate_campaign_rows()
    log(f"    fan-out of {size:,} with history rows...")
    figures["baseline_history"] = _fan_out_timed(
        _campaign("Baseline fan-out with history", baseline), history=True
    )
    _truncate_campaign_rows()
    figures["unreachable"] = make_unreachable(args.profiles, args.seed)
    log(f"    fan-out of {args.profiles:,} (load {_load():.1f})...")
    main = _fan_out_timed(_campaign("Main fan-out", everyone))
    figures["main"] = main
    check = _check(everyone.campaigns.get(), 2000, args.seed)
    main["left_breakdown"] = check.pop("left_sample")
    figures["check"] = check
    return figures


# --- tick ---------------------------------------------------------------------------------------
# The engine's tick on due enrollments of a triggered campaign (welcome: no item checks), added
# for the tick bench: enrollments per second to created messages (dispatch=False: the content
# is rendered by the delivery workers later), SQL statements per enrollment and per batch, a
# naive per-enrollment baseline (queue_message for each, as code without the engine would do),
# and a tick with nothing due on the processed database.

TICK_ENROLLMENTS = 100_000
TICK_TARGET_PER_S = 1_000.0
TICK_STRETCH_PER_S = 2_000.0
TICK_NAIVE_SAMPLE = 2_000
TICK_BATCH_SIZES = (100, 1_000)
EMPTY_TICK_TARGET_MS = 20.0
EMPTY_TICK_TARGET_QUERIES = 5
EMPTY_TICK_RUNS = 25


class QueryCounter:
    """Counts the statements run on the default connection (execute_wrapper: no debug cursor,
    so counting costs next to nothing), and their wall time by kind (see ``statement_kind``)."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds: dict[str, float] = defaultdict(float)

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.count += 1
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.seconds[statement_kind(sql)] += time.perf_counter() - start

    def __enter__(self) -> QueryCounter:
        from django.db import connection

        self._wrapper = connection.execute_wrapper(self)
        self._wrapper.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._wrapper.__exit__(*exc)


def statement_kind(sql: str) -> str:
    """ "UPDATE omnichannel_enrollment", "SELECT omnichannel_message", "WITH ... INSERT
    omnichannel_message": the verb and the first table it names."""
    words = sql.replace('"', " ").replace("(", " ").split()
    verb = words[0].upper() if words else "?"
    for i, word in enumerate(words):
        if word.upper() in {"FROM", "INTO", "UPDATE"} and i + 1 < len(words):
            table = words[i + 1]
            if verb == "WITH":
                return f"WITH ... INSERT {table}"
            return f"{verb} {table}"
    return " ".join(words[:4])


def _tick_campaign(name: str):
    from omnichannel.campaigns.models import Campaign, CampaignKind, CampaignStatus, Step

    campaign = Campaign.objects.create(
        name=name,
        kind=CampaignKind.TRIGGERED,
        trigger="welcome",
        status=CampaignStatus.ACTIVE,
        quiet_hours=False,  # every due enrollment becomes a message now
    )
    for position, (channel, wait) in enumerate(
        [("email", timedelta(0)), ("sms", timedelta(days=3))], start=1
    ):
        Step.objects.create(
            campaign=campaign,
            position=position,
            channel=channel,
            wait=wait,
            template="welcome",
            content={channel: {"subject.txt": "Welcome", "body.txt": "Hello {{ first_name }}"}},
        )
    return campaign


def _enroll_range(campaign, first_id: int, last_id: int) -> int:
    """Enroll profiles first_id..last_id, all due at NOW, in one INSERT ... SELECT."""
    from segments_bench import insert_select

    from omnichannel.campaigns.models import Enrollment

    count = insert_select(
        Enrollment,
        {
            "campaign": str(int(campaign.pk)),
            "profile": "id",
            "subject_key": "'welcome'",
            "context": "'{}'::jsonb",
            "state": "'active'",
            "step_position": "0",
            "next_due_at": f"{NOW_SQL} - interval '1 minute'",
            "enrolled_at": f"{NOW_SQL} - interval '1 hour'",
        },
        "FROM omnichannel_customerprofile WHERE id BETWEEN %s AND %s",
        [first_id, last_id],
    )
    _analyze()
    return count


def _naive_tick(campaign) -> dict[str, Any]:
    """Per due enrollment: queue_message (reach, render, store), then save the enrollment and
    add its history row; each in its own transaction, as code without the engine would do."""
    from django.db import transaction

    from omnichannel.campaigns.models import (
        Enrollment,
        EnrollmentAction,
        EnrollmentLog,
        EnrollmentState,
    )
    from omnichannel.channels.sending import queue_message
    from omnichannel.exceptions import NotReachable

    step = campaign.steps.get(position=1)
    following = campaign.steps.get(position=2)
    sent = skipped = 0
    with QueryCounter() as queries:
        start = time.perf_counter()
        due = Enrollment.objects.filter(
            campaign=campaign, state=EnrollmentState.ACTIVE, next_due_at__lte=NOW
        ).select_related("profile")
        for enrollment in due:
            with transaction.atomic():
                try:
                    message = queue_message(
                        enrollment.profile,
                        channel=step.channel,
                        purpose=campaign.purpose,
                        now=NOW,
                        template=step.template,
                        inline=step.content.get(step.channel),
                        tags=[f"campaign:{campaign.pk}"],
                    )
                except NotReachable:
                    message = None
                    skipped += 1
                else:
                    sent += 1
                enrollment.step_position = 1
                enrollment.last_message_at = NOW if message else None
                enrollment.next_due_at = NOW + following.wait
                enrollment.save(update_fields=["step_position", "last_message_at", "next_due_at"])
                EnrollmentLog.objects.create(
                    enrollment=enrollment,
                    at=NOW,
                    action=EnrollmentAction.SENT if message else EnrollmentAction.SKIPPED,
                    step=step,
                    channel=step.channel,
                    message=message,
                )
        seconds = time.perf_counter() - start
    count = sent + skipped
    return {
        "enrollments": count,
        "sent": sent,
        "seconds": seconds,
        "per_s": count / seconds,
        "queries": queries.count,
        "queries_per_enrollment": queries.count / count,
    }


def _one_batch(size: int) -> dict[str, Any]:
    """Claim and advance one batch of ``size``: statements and seconds (no tick overhead)."""
    from omnichannel.campaigns.engine import advance, claim_due_enrollments

    with QueryCounter() as queries:
        start = time.perf_counter()
        claimed = claim_due_enrollments(now=NOW, limit=size)
        result = advance(claimed, now=NOW)
        seconds = time.perf_counter() - start
    return {
        "batch_size": size,
        "claimed": result.claimed,
        "sent": result.sent,
        "queries": queries.count,
        "seconds": seconds,
        "per_s": result.claimed / seconds if seconds else 0.0,
        "statements_s": dict(queries.seconds),
    }


def _profile_batch(size: int) -> list[str]:
    """cProfile of one claimed batch: the top functions by cumulative time (where it goes)."""
    import cProfile
    import io
    import pstats

    from omnichannel.campaigns.engine import advance, claim_due_enrollments

    profiler = cProfile.Profile()
    profiler.enable()
    advance(claim_due_enrollments(now=NOW, limit=size), now=NOW)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("cumulative")
    stats.print_stats(r"omnichannel|django/db/models/(query|sql/compiler)|psycopg", 25)
    lines = [line.rstrip() for line in out.getvalue().splitlines()]
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    return [line for line in lines[start:] if line.strip()][:26]


def _empty_ticks() -> dict[str, Any]:
    from omnichannel.campaigns.engine import tick

    tick(now=NOW, dispatch=False)  # warm: connection, channel registry, caches
    times = []
    for _ in range(EMPTY_TICK_RUNS):
        start = time.perf_counter()
        result = tick(now=NOW, dispatch=False)
        times.append((time.perf_counter() - start) * 1000)
        assert result.claimed == 0, result.as_dict()
    with QueryCounter() as queries:
        tick(now=NOW, dispatch=False)
    return {
        "median_ms": statistics.median(times),
        "max_ms": max(times),
        "queries": queries.count,
        "runs": EMPTY_TICK_RUNS,
    }


@scenario("tick")
def bench_tick(args: argparse.Namespace) -> dict[str, Any]:
    from django.db import connection

    from omnichannel.campaigns import engine
    from omnichannel.campaigns.models import Enrollment, EnrollmentState
    from omnichannel.channels.models import Message
    from omnichannel.conf import app_settings

    _truncate_campaign_rows()  # another scenario's messages would count against the caps
    size = min(TICK_ENROLLMENTS, args.profiles)
    sample = min(TICK_NAIVE_SAMPLE, args.profiles)
    figures: dict[str, Any] = {"enrollments": size}

    log(f"    naive per-enrollment path on {sample:,} (queue_message each)...")
    naive = _tick_campaign("Tick bench: naive")
    _enroll_range(naive, 1, sample)
    figures["naive_sample"] = _naive_tick(naive)
    _truncate_campaign_rows()

    campaign = _tick_campaign("Tick bench")
    step = time.perf_counter()
    _enroll_range(campaign, 1, size)
    figures["enroll_s"] = time.perf_counter() - step
    log(f"    queries per batch (batch sizes {', '.join(map(str, TICK_BATCH_SIZES))})...")
    figures["batches"] = [_one_batch(n) for n in TICK_BATCH_SIZES]
    batch_size = int(app_settings.CAMPAIGN_BATCH_SIZE)
    figures["profile_batch_size"] = batch_size
    figures["profile_top"] = _profile_batch(batch_size)
    before = sum(b["claimed"] for b in figures["batches"]) + batch_size
    # A fresh session for the main run: PostgreSQL caches the plans of its foreign-key checks
    # per session, and the small batches above planned them on a near-empty message table
    # (sequential scans, which the main run would then repeat for every row it inserts).
    _analyze()
    connection.close()

    log(f"    tick over the remaining {size - before:,} due enrollments (load {_load():.1f})...")
    phases = ["claim_due_enrollments", "advance", "_create_messages"]
    backend_cpu = _backend_cpu()  # opens the fresh connection
    with PhaseTimer(engine, phases) as timer, QueryCounter() as queries:
        python_cpu = time.process_time()
        start = time.perf_counter()
        result = engine.tick(now=NOW, dispatch=False, max_batches=1_000_000)
        seconds = time.perf_counter() - start
        python_cpu_s = time.process_time() - python_cpu
    backend_cpu_s = _backend_cpu() - backend_cpu if backend_cpu is not None else None
    figures["main"] = {
        **result.as_dict(),
        "batch_size": batch_size,
        "seconds": seconds,
        "per_s": result.claimed / seconds,
        "queries": queries.count,
        "queries_per_enrollment": queries.count / max(result.claimed, 1),
        "phases_s": {name.strip("_"): timer.seconds[name] for name in phases},
        # CPU of this process and of its PostgreSQL backend: what the tick costs whatever
        # else the machine runs (the wall time depends on that load).
        "python_cpu_s": python_cpu_s,
        "backend_cpu_s": backend_cpu_s,
    }
    figures["messages"] = Message.objects.filter(campaign=campaign).count()
    figures["still_due"] = Enrollment.objects.filter(
        campaign=campaign, state=EnrollmentState.ACTIVE, next_due_at__lte=NOW
    ).count()
    _analyze()
    log("    tick with nothing due...")
    figures["empty"] = _empty_ticks()
    return figures


def _report_tick(f: dict[str, Any]) -> None:
    main, naive, empty = f["main"], f["naive_sample"], f["empty"]
    verdict = (
        "stretch met"
        if main["per_s"] >= TICK_STRETCH_PER_S
        else "met"
        if main["per_s"] >= TICK_TARGET_PER_S
        else "MISSED"
    )
    log(
        f"    tick: {main['claimed']:,} due enrollments in {main['seconds']:.1f} s = "
        f"{main['per_s']:,.0f}/s (target {TICK_TARGET_PER_S:,.0f}, stretch "
        f"{TICK_STRETCH_PER_S:,.0f}: {verdict}); {main['sent']:,} messages, batches of "
        f"{main['batch_size']}; {main['queries_per_enrollment']:.3f} queries per enrollment "
        f"({main['queries']:,} in {main['batches']} batches)"
    )
    if main.get("backend_cpu_s") is not None:
        cpu = main["python_cpu_s"] + main["backend_cpu_s"]
        log(
            f"      CPU: Python {main['python_cpu_s']:.1f} s + PostgreSQL backend "
            f"{main['backend_cpu_s']:.1f} s = {main['claimed'] / cpu:,.0f} enrollments per CPU "
            f"second ({cpu / main['seconds']:.0%} of the wall time busy; on an idle machine "
            "the wall time approaches the CPU time, the two working in turn)"
        )
    log(
        "      phases: "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in main["phases_s"].items())
        + f" (advance includes create_messages); {f['messages']:,} messages in all, "
        f"{f['still_due']} still due"
    )
    batches = "; ".join(
        f"{b['batch_size']:,}: {b['queries']} queries, {b['seconds'] * 1000:.0f} ms "
        f"({b['per_s']:,.0f}/s)"
        for b in f["batches"]
    )
    flat = len({b["queries"] for b in f["batches"]}) == 1
    log(
        f"    queries per batch (claim + advance): {batches}: "
        + ("flat" if flat else "GROWS with the batch")
    )
    largest = f["batches"][-1]
    spent = sorted(largest.get("statements_s", {}).items(), key=lambda item: -item[1])
    log(
        f"      statements of the batch of {largest['batch_size']:,} by wall time (the rest, "
        f"{(largest['seconds'] - sum(s for _, s in spent)) * 1000:.0f} ms, is Python): "
        + ", ".join(f"{kind} {seconds * 1000:.0f} ms" for kind, seconds in spent[:8])
    )
    log(
        f"    baseline, naive path (queue_message per enrollment) on {naive['enrollments']:,}: "
        f"{naive['seconds']:.1f} s = {naive['per_s']:,.0f}/s, "
        f"{naive['queries_per_enrollment']:.1f} queries per enrollment; "
        f"{main['claimed']:,} would take {main['claimed'] / naive['per_s']:,.0f} s = "
        f"{main['per_s'] / naive['per_s']:.0f}x the tick's time"
    )
    ok_ms = empty["median_ms"] <= EMPTY_TICK_TARGET_MS
    ok_q = empty["queries"] <= EMPTY_TICK_TARGET_QUERIES
    log(
        f"    tick with nothing due ({f['enrollments']:,} enrollments waiting): median "
        f"{empty['median_ms']:.1f} ms, max {empty['max_ms']:.1f} ms over {empty['runs']} runs "
        f"(target {EMPTY_TICK_TARGET_MS:.0f} ms: {'met' if ok_ms else 'MISSED'}); "
        f"{empty['queries']} queries (target {EMPTY_TICK_TARGET_QUERIES}: "
        f"{'met' if ok_q else 'MISSED'})"
    )
    log(f"    cProfile of one batch of {f['profile_batch_size']} (cumulative):")
    for line in f["profile_top"][:16]:
        log(f"      {line[:150]}")


REPORTS["tick"] = _report_tick


# --- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--seed", type=float, default=0.42)
    parser.add_argument(
        "--only", help=f"comma-separated scenarios (default all: {', '.join(SCENARIOS)})"
    )
    parser.add_argument("--json", help="write the results here (default: stdout)")
    args = parser.parse_args()
    names = [s.strip() for s in (args.only or ",".join(SCENARIOS)).split(",") if s.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {sorted(SCENARIOS)}")
    setup_django()
    result: dict[str, Any] = {"data": generate(args.profiles, args.seed), "scenarios": {}}
    for name in names:
        log(f"  scenario {name}:")
        result["scenarios"][name] = SCENARIOS[name](args)
    text = json.dumps(result, default=str)
    if args.json:
        Path(args.json).write_text(text)
    report(result)


if __name__ == "__main__":
    main()
