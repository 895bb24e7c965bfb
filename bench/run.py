"""Benchmarks of django-oscar-omnichannel on PostgreSQL, in one command.

    python bench/run.py            # full run (the 100k-customer rebuild takes a long while)
    python bench/run.py --quick    # smaller run, a few minutes
    make bench

1. Checkout path: the demo shop with our app against the same shop without it
   (OMNICHANNEL_DISABLED=1), each in its own process and on its own freshly migrated
   database, small batches alternating between the two; ms per request and the ratio.
2. Bulk profile rebuild: N customers with their orders generated in SQL, then
   ``omnichannel_rebuild_profiles --backfill``; profiles per second, overall and per phase.
3. Segments: N profiles (default 1,000,000) with 10 N events and 3 N messages generated in
   SQL; segment counts and fetches, RFM refresh, a naive Python evaluation for comparison.

Also the API (bench/api_bench.py), on <name>_api: the API served by gunicorn on loopback,
events per second in batches of 100 against one event per request, in the same run; and
campaigns (bench/campaigns.py), on <name>_campaigns: a mass fan-out to N people (default
1,000,000) and the engine's tick.

Databases are named after DATABASE_URL's (default omnichannel_bench): <name>_tpl_on,
<name>_tpl_off, <name>_on, <name>_off, <name>_rebuild, <name>_segments. They are created here
and dropped at the end, whatever happens. Speed is reported, never asserted: the exit status
is 0 unless the bench could not run (2) or a rebuilt profile disagrees with its orders (1).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from analytics import run_analytics
from api_bench import run_api
from campaigns import run_campaigns
from common import (
    BENCH_DIR,
    DEFAULT_DATABASE_URL,
    PROJECT_DIR,
    Admin,
    BenchError,
    django_env,
    redact,
    run_script,
)

TARGET_RATIO = 1.15
LOG_DIR = PROJECT_DIR / "var" / "bench"
VARIANTS = ("on", "off")  # with our app installed / without it (OMNICHANNEL_DISABLED=1)
LABEL = {"on": "with omnichannel", "off": "without (baseline)"}


def log(message: str = "") -> None:
    print(message, flush=True)


# --- checkout ---------------------------------------------------------------------------------


class Worker:
    """A checkout_bench.py ``serve`` process: one variant, one database, JSON lines over pipes."""

    def __init__(self, variant: str, database_url: str, args: argparse.Namespace) -> None:
        self.variant = variant
        self.log_path = LOG_DIR / f"checkout-{variant}.log"
        self.log_file = self.log_path.open("w")
        cmd = [
            sys.executable,
            str(BENCH_DIR / "checkout_bench.py"),
            "serve",
            f"--warmup-adds={args.warmup_adds}",
            f"--warmup-checkouts={args.warmup_checkouts}",
        ]
        self.proc = subprocess.Popen(
            cmd,
            env=django_env(database_url, omnichannel=variant == "on"),
            cwd=PROJECT_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log_file,
            text=True,
            bufsize=1,
        )

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            self.log_file.flush()
            tail = "\n".join(self.log_path.read_text().strip().splitlines()[-30:])
            raise BenchError(
                f"checkout worker ({LABEL[self.variant]}) exited with {self.proc.returncode}:\n"
                f"{tail}\n(full log: {self.log_path})"
            )
        return json.loads(line)

    def ask(self, command: dict) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


@dataclass
class VariantResult:
    add_ms: list[float] = field(default_factory=list)
    checkout_ms: list[float] = field(default_factory=list)
    step_ms: dict[str, list[float]] = field(default_factory=dict)
    pair_add: list[float] = field(default_factory=list)  # mean of each step's two adds
    requests_per_checkout: int = 0
    stats: dict = field(default_factory=dict)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def prepare_templates(admin: Admin, variants: list[str], reuse: bool) -> dict[str, str]:
    """Migrate and seed one template database per variant (in parallel: ~30 s each alone)."""
    templates = {v: admin.name(f"tpl_{v}") for v in variants}
    if reuse and all(admin.exists(name) for name in templates.values()):
        log(f"  reusing {', '.join(templates.values())} (--reuse-templates)")
        return templates
    for name in templates.values():
        admin.create(name)
    started = time.monotonic()
    procs = {}
    for variant, name in templates.items():
        log_path = LOG_DIR / f"prepare-{variant}.log"
        procs[variant] = (
            subprocess.Popen(
                [sys.executable, str(BENCH_DIR / "checkout_bench.py"), "prepare"],
                env=django_env(admin.url_of(name), omnichannel=variant == "on"),
                cwd=PROJECT_DIR,
                stdout=log_path.open("w"),
                stderr=subprocess.STDOUT,
            ),
            log_path,
        )
    for variant, (proc, log_path) in procs.items():
        if proc.wait() != 0:
            tail = "\n".join(log_path.read_text().strip().splitlines()[-30:])
            raise BenchError(f"migrating the {LABEL[variant]} template failed:\n{tail}")
    log(
        f"  migrated and seeded {', '.join(templates.values())} in "
        f"{time.monotonic() - started:.0f} s"
    )
    return templates


def run_checkout(admin: Admin, templates: dict[str, str], args: argparse.Namespace) -> dict:
    log(
        f"\n== Checkout path: {args.adds} add-to-basket requests and {args.checkouts} checkouts "
        "per variant, alternating between the variants request by request =="
    )
    results = {v: VariantResult() for v in VARIANTS}
    workers: dict[str, Worker] = {}
    try:
        for variant in VARIANTS:
            name = admin.create(admin.name(variant), template=templates[variant])
            workers[variant] = Worker(variant, admin.url_of(name), args)
        for worker in workers.values():
            worker.read()  # "ready": Django set up and warmed up
        # The machine may be busy with other work: alternate in the smallest steps (one
        # visitor's two adds, one checkout), each variant going first every other time, so
        # that load comes and goes on both alike. Pairs (one step of each) give a paired ratio.
        visits = args.adds // 2
        for i in range(visits + args.checkouts):
            order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                result = results[variant]
                if i < visits:
                    batch = workers[variant].ask({"cmd": "adds", "n": 2})
                    result.add_ms += batch["add_ms"]
                    result.pair_add.append(statistics.fmean(batch["add_ms"]))
                else:
                    batch = workers[variant].ask({"cmd": "checkouts", "n": 1})
                    result.checkout_ms += batch["checkout_ms"]
                    result.requests_per_checkout = batch["requests_per_checkout"]
                    for step, times in batch["step_ms"].items():
                        result.step_ms.setdefault(step, []).extend(times)
            if (i + 1) % max(1, (visits + args.checkouts) // 5) == 0:
                log(f"  {i + 1}/{visits + args.checkouts} steps, load {os.getloadavg()[0]:.1f}")
        for variant, worker in workers.items():
            results[variant].stats = worker.ask({"cmd": "stats"})
    finally:
        for worker in workers.values():
            worker.stop()
    summary = summarise_checkout(results)
    if (
        args.profile
        or summary["add_ratio"] > TARGET_RATIO
        or summary["checkout_ratio"] > (TARGET_RATIO)
    ):
        summary["profile"] = profile_checkout(admin, args)
    for variant in VARIANTS:
        admin.drop(admin.name(variant))
    return summary


def summarise_checkout(results: dict[str, VariantResult]) -> dict:
    on, off = results["on"], results["off"]
    rpc = off.requests_per_checkout or 1

    def paired(a: list[float], b: list[float]) -> float:
        return _median([x / y for x, y in zip(a, b, strict=True)])

    summary = {
        "add_ms": {v: _median(results[v].add_ms) for v in VARIANTS},
        "add_mean_ms": {v: statistics.fmean(results[v].add_ms) for v in VARIANTS},
        "checkout_ms": {v: _median(results[v].checkout_ms) for v in VARIANTS},
        "checkout_req_ms": {v: _median(results[v].checkout_ms) / rpc for v in VARIANTS},
        "requests_per_checkout": rpc,
        "steps_ms": {
            v: {step: _median(times) for step, times in results[v].step_ms.items()}
            for v in VARIANTS
        },
        "add_ratio": _median(on.add_ms) / _median(off.add_ms),
        "checkout_ratio": _median(on.checkout_ms) / _median(off.checkout_ms),
        "add_ratio_paired": paired(on.pair_add, off.pair_add),
        "checkout_ratio_paired": paired(on.checkout_ms, off.checkout_ms),
        "samples": {"adds": len(on.add_ms), "checkouts": len(on.checkout_ms)},
        "queries": {v: results[v].stats.get("queries", {}) for v in VARIANTS},
        "events": results["on"].stats.get("events", {}),
    }
    log("")
    log(f"  {'':34}{'with':>10}{'without':>10}{'ratio':>8}  (target <= {TARGET_RATIO:.2f}x)")
    rows = [
        ("add to basket, ms/request", summary["add_ms"], summary["add_ratio"]),
        ("checkout, ms/checkout", summary["checkout_ms"], summary["checkout_ratio"]),
        (
            f"checkout, ms/request ({rpc} req.)",
            summary["checkout_req_ms"],
            summary["checkout_ratio"],
        ),
    ]
    for label, values, ratio in rows:
        flag = "" if ratio <= TARGET_RATIO else "  ABOVE TARGET"
        log(f"  {label:34}{values['on']:10.1f}{values['off']:10.1f}{ratio:7.2f}x{flag}")
    log(
        f"  median of paired ratios (steps run back to back): add "
        f"{summary['add_ratio_paired']:.2f}x, "
        f"checkout {summary['checkout_ratio_paired']:.2f}x"
    )
    log(
        "  median ms per checkout step (with / without):  "
        + ", ".join(
            f"{step} {summary['steps_ms']['on'][step]:.0f}/{summary['steps_ms']['off'][step]:.0f}"
            for step in summary["steps_ms"]["on"]
        )
    )
    q_on, q_off = summary["queries"]["on"], summary["queries"]["off"]
    log(
        "  SQL queries (with / without):  "
        + ", ".join(f"{key} {q_on.get(key)}/{q_off.get(key)}" for key in q_on)
    )
    if summary["events"]:
        log(
            "  events recorded by the run (with): "
            + ", ".join(f"{k} {n}" for k, n in summary["events"].items())
        )
    return summary


def profile_checkout(admin: Admin, args: argparse.Namespace) -> dict:
    """cProfile one more pass of the 'with' variant; where does time under omnichannel/ go?"""
    log("\n  profiling the 'with' variant (cProfile; absolute times inflated by the profiler)")
    name = admin.create(admin.name("on"), template=admin.name("tpl_on"))
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "checkout.prof")
        run_script(
            "checkout_bench.py",
            [
                "profile",
                f"--adds={args.profile_adds}",
                f"--checkouts={args.profile_checkouts}",
                f"--profile-out={out}",
            ],
            django_env(admin.url_of(name), omnichannel=True),
            label="checkout profile",
        )
        requests = json.loads(Path(out + ".json").read_text())["requests"]
        stats = pstats.Stats(out)
        keep = LOG_DIR / "checkout-on.prof"
        stats.dump_stats(str(keep))
    package = str(PROJECT_DIR / "omnichannel")
    total = max(ct for (_, _, _, ct, _) in stats.stats.values())
    rows = []
    for func, (_cc, nc, _tt, ct, _callers) in stats.stats.items():
        filename, line, fname = func
        if not filename.startswith(package):
            continue
        own = ct
        if fname == "__call__" and filename.endswith("middleware.py"):
            # The middleware's cumulative time includes the whole rest of the request.
            inner = [
                c_ct
                for callee, (_, _, _, _, callers) in stats.stats.items()
                for caller, (_, _, _, c_ct) in callers.items()
                if caller == func
            ]
            own = ct - max(inner, default=0)
        rows.append((own, nc, f"{os.path.relpath(filename, PROJECT_DIR)}:{line}({fname})"))
    rows.sort(reverse=True)
    entry = [r for r in rows if "receivers.py" in r[2] or "middleware.py" in r[2]]
    ours = sum(
        r[0]
        for r in entry
        if "wrapper" in r[2] or "remember_loaded" in r[2] or "middleware.py" in r[2]
    )
    log(
        f"  {requests} requests profiled; time under our receivers and middleware: "
        f"{ours / requests * 1000:.2f} ms/request = {ours / total:.1%} of the profiled time"
    )
    log("  omnichannel functions by cumulative time (ms per request, calls):")
    for own, calls, where in rows[:12]:
        log(f"    {own / requests * 1000:7.3f}  {calls:6d}  {where}")
    log(f"  full stats: {keep} (python -m pstats)")
    admin.drop(name)
    return {
        "requests": requests,
        "ours_ms_per_request": ours / requests * 1000,
        "ours_share": ours / total,
        "top": [(own / requests * 1000, calls, where) for own, calls, where in rows[:12]],
    }


# --- rebuild ----------------------------------------------------------------------------------


def run_rebuild(admin: Admin, template: str, sizes: list[int], args: argparse.Namespace) -> list:
    log("\n== Bulk profile rebuild: omnichannel_rebuild_profiles --backfill ==")
    results = []
    for size in sizes:
        name = admin.create(admin.name("rebuild"), template=template)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rebuild.json"
            log(
                f"  {size:,} customers: generating data, then rebuilding "
                f"(load {os.getloadavg()[0]:.1f})..."
            )
            run_script(
                "rebuild_bench.py",
                [f"--customers={size}", f"--json={out}"],
                django_env(admin.url_of(name), omnichannel=True),
                label=f"rebuild {size}",
            )
            result = json.loads(out.read_text())
        admin.drop(name)
        results.append(result)
        report_rebuild(result)
    if len(results) > 1:
        small, large = results[0], results[-1]
        scale = large["customers"] / small["customers"]
        time_scale = large["total_s"] / small["total_s"]
        log(
            f"  scaling: {scale:.0f}x the customers took {time_scale:.1f}x the time "
            f"({'linear' if time_scale < scale * 1.25 else 'worse than linear'})"
        )
    return results


def report_rebuild(r: dict) -> None:
    phases = r["phases_s"]
    profiles = r["profiles"]
    log(
        f"    data: {r['users']:,} users + {r['guests']:,} guests, {r['orders']:,} orders, "
        f"{r['lines']:,} lines (generated in {r['generate_s']:.1f} s)"
    )
    log(
        f"    total: {r['total_s']:.1f} s for {profiles:,} profiles = "
        f"{profiles / r['total_s']:,.0f} profiles/s ({r['events']:,} events)"
    )
    backfill = phases.get("backfill", 0.0)
    fold = phases.get("fold", 0.0)
    fold_agg = phases.get("fold.aggregates", 0.0)
    aggregates = phases.get("aggregates", 0.0)
    rows = [
        ("backfill (users + orders -> events)", backfill, profiles, "profiles"),
        ("  of which users", phases.get("backfill.users", 0.0), r["users"], "users"),
        ("  of which orders", phases.get("backfill.orders", 0.0), r["orders"], "orders"),
        ("fold (events -> profiles)", fold, profiles, "profiles"),
        ("  of which per-batch aggregates", fold_agg, profiles, "profiles"),
        ("aggregates (full recompute)", aggregates, profiles, "profiles"),
    ]
    for label, seconds, count, unit in rows:
        if not seconds:
            log(f"    {label:38}{'-':>9}    (not called)")
            continue
        log(f"    {label:38}{seconds:9.1f} s  {count / seconds:10,.0f} {unit}/s")
    for missing in r.get("untimed_phases", []):
        log(f"    phase not timed: {missing}; update bench/rebuild_bench.py")
    other = r["total_s"] - backfill - fold - aggregates
    log(f"    {'other (counts)':38}{other:9.1f} s")
    verify = r["verify"]
    if verify["problem_count"]:
        log(f"    CHECK FAILED: {verify['problem_count']} problems, e.g.:")
        for problem in verify["problems"]:
            log(f"      {problem}")
    else:
        log(
            f"    check: totals match the orders; {verify['checked_profiles']} sampled profiles' "
            "orders_count and total_spent equal their orders'"
        )


# --- segments ---------------------------------------------------------------------------------

SEGMENT_COUNT_TARGET_S = 2.0
RFM_REFRESH_TARGET_S = 60.0


def run_segments(admin: Admin, template: str, sizes: list[int], args: argparse.Namespace) -> list:
    log("\n== Segments: N profiles, 10 N events, 3 N messages; counts, fetches, RFM refresh ==")
    results = []
    for size in sizes:
        name = admin.create(admin.name("segments"), template=template)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "segments.json"
            log(
                f"  {size:,} profiles: generating data, then measuring "
                f"(load {os.getloadavg()[0]:.1f})..."
            )
            run_script(
                "segments_bench.py",
                [f"--profiles={size}", f"--json={out}"],
                django_env(admin.url_of(name), omnichannel=True),
                label=f"segments {size}",
            )
            result = json.loads(out.read_text())
        admin.drop(name)
        result["load_after"] = os.getloadavg()[0]
        results.append(result)
        report_segments(result)
    return results


def _segment_rows(rows: list[dict]) -> None:
    log(f"    {'segment':76}{'members':>10}{'cold':>8}{'count':>8}{'fetch':>8}")
    for row in rows:
        log(
            f"    {row['name'][:75]:76}{row['count']:>10,}{row['count_cold_s']:>7.2f}s"
            f"{row['count_s']:>7.2f}s{row['fetch_1000_s']:>7.2f}s"
        )


def report_segments(r: dict) -> None:
    n = r["profiles"]
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in r["generate_phases_s"].items())
    log(
        f"    data: {n:,} profiles, {r['events']:,} events ({r['orders']:,} orders), "
        f"{r['messages']:,} messages; generated in {r['generate_s']:.0f} s ({phases})"
    )
    scores = r["scores"]
    verdict = "met" if scores["rfm_s"] <= RFM_REFRESH_TARGET_S else "MISSED"
    log(
        f"    RFM refresh: {scores['rfm_s']:.1f} s for {scores['rfm_rows']:,} customers with "
        f"orders (target {RFM_REFRESH_TARGET_S:.0f} s: {verdict}); engagement refresh "
        f"{scores['engagement_s']:.1f} s ({scores['engagement_rows']:,} rows); purchased "
        f"products rebuild {r['generate_phases_s']['purchased_products']:.1f} s"
    )
    log("    as migrated (cold = first count; count and fetch of 1000 ids: median of 3):")
    _segment_rows(r["segments"])
    main = r["segments"][0]
    verdict = "met" if main["count_s"] <= SEGMENT_COUNT_TARGET_S else "MISSED"
    log(
        f"    main segment count: {main['count_s']:.2f} s "
        f"(target {SEGMENT_COUNT_TARGET_S:.0f} s: {verdict})"
    )
    naive = r["naive"]
    per_profile = naive["naive_s"] / naive["subset"]
    extrapolated = per_profile * n
    agree = "agrees" if naive["naive_count"] == naive["sql_count_on_subset"] else "DISAGREES"
    log(
        f"    naive Python (load profiles, test each condition per profile) on "
        f"{naive['subset']:,} profiles: {naive['naive_s']:.1f} s, {naive['naive_count']:,} "
        f"members (SQL on the same profiles {agree}: {naive['sql_count_on_subset']:,})"
    )
    log(
        f"      extrapolated to {n:,} profiles: {extrapolated:,.0f} s = "
        f"{extrapolated / main['count_s']:,.0f}x the SQL count"
    )
    log("    plan of the main count (EXPLAIN ANALYZE, as migrated):")
    for line in r["plan"].splitlines():
        log(f"      {line}")
    log(f"    load average after the run: {r['load_after']:.1f}")


# --- main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller run: 60 adds, 16 checkouts, 1k and 5k customers",
    )
    parser.add_argument(
        "--only",
        choices=["checkout", "rebuild", "segments", "api", "campaigns", "analytics"],
        help="run one bench only",
    )
    parser.add_argument("--adds", type=int, help="timed add-to-basket requests per variant")
    parser.add_argument("--checkouts", type=int, help="timed checkouts per variant")
    parser.add_argument("--sizes", help="customers per rebuild run, comma-separated")
    parser.add_argument(
        "--segment-profiles",
        help="profiles per segments run, comma-separated (default 1000000; --quick 20000)",
    )
    parser.add_argument(
        "--campaign-profiles",
        help="profiles per campaigns run, comma-separated (default 1000000; --quick 20000)",
    )
    parser.add_argument(
        "--campaign-scenarios",
        help="scenarios of bench/campaigns.py, comma-separated (default all)",
    )
    parser.add_argument(
        "--analytics-messages",
        help="messages per analytics run, comma-separated (default 10000000; --quick 200000)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile the checkout path even if within target"
    )
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument(
        "--reuse-templates",
        action="store_true",
        help="for working on the bench: keep the migrated template databases at the end and "
        "reuse them next time (stale if migrations changed since)",
    )
    args = parser.parse_args()
    quick = args.quick
    args.adds = args.adds or (60 if quick else 200)
    args.checkouts = args.checkouts or (16 if quick else 50)
    args.warmup_adds = 10 if quick else 20
    args.warmup_checkouts = 2 if quick else 5
    args.profile_adds = 20 if quick else 60
    args.profile_checkouts = 5 if quick else 15
    sizes = args.sizes or ("1000,5000" if quick else "10000,100000")
    try:
        args.sizes = [int(s.replace("_", "")) for s in sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, not {sizes!r}")
    segment_sizes = args.segment_profiles or ("20000" if quick else "1000000")
    try:
        args.segment_profiles = [
            int(s.replace("_", "")) for s in segment_sizes.split(",") if s.strip()
        ]
    except ValueError:
        parser.error(f"--segment-profiles must be comma-separated integers, not {segment_sizes!r}")
    campaign_sizes = args.campaign_profiles or ("20000" if quick else "1000000")
    try:
        args.campaign_profiles = [
            int(s.replace("_", "")) for s in campaign_sizes.split(",") if s.strip()
        ]
    except ValueError:
        parser.error(
            f"--campaign-profiles must be comma-separated integers, not {campaign_sizes!r}"
        )
    analytics_sizes = args.analytics_messages or ("200000" if quick else "10000000")
    try:
        args.analytics_messages = [
            int(s.replace("_", "")) for s in analytics_sizes.split(",") if s.strip()
        ]
    except ValueError:
        parser.error(
            f"--analytics-messages must be comma-separated integers, not {analytics_sizes!r}"
        )
    if args.adds < 2 or args.checkouts < 1:
        parser.error("need at least 2 adds and 1 checkout")
    return args


_received_signal = ""


def _terminate(signum, frame):  # SIGTERM: clean up like Ctrl-C
    global _received_signal
    _received_signal = signal.Signals(signum).name
    raise KeyboardInterrupt


def main() -> int:
    args = parse_args()
    url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        admin = Admin(url)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    figures: dict = {}
    status = 0
    started = time.monotonic()
    try:
        admin.connect()
        versions = _versions()
        log(
            f"omnichannel bench {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}: "
            f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, PostgreSQL "
            f"{admin.server_version // 10000}.{admin.server_version % 10000}, {versions}"
        )
        log(
            f"databases: {admin.base_name}_* at {redact(admin.server_url)}"
            f"{' (quick run)' if args.quick else ''}"
        )
        single = ("rebuild", "segments", "api", "campaigns", "analytics")
        variants = ["on"] if args.only in single else list(VARIANTS)
        templates = prepare_templates(admin, variants, args.reuse_templates)
        if args.reuse_templates:  # kept for the next run
            admin.created = [n for n in admin.created if n not in templates.values()]
        if args.only in (None, "checkout"):
            figures["checkout"] = run_checkout(admin, templates, args)
        if args.only in (None, "rebuild"):
            figures["rebuild"] = run_rebuild(admin, templates["on"], args.sizes, args)
            if any(r["verify"]["problem_count"] for r in figures["rebuild"]):
                status = 1
        if args.only in (None, "segments"):
            figures["segments"] = run_segments(admin, templates["on"], args.segment_profiles, args)
        if args.only in (None, "api"):
            figures["api"] = run_api(admin, templates["on"], args)
        if args.only in (None, "campaigns"):
            figures["campaigns"] = run_campaigns(
                admin, templates["on"], args.campaign_profiles, args
            )
        if args.only in (None, "analytics"):
            figures["analytics"] = run_analytics(
                admin, templates["on"], args.analytics_messages, args
            )
    except BenchError as exc:
        print(f"\nbench: {exc}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        print(f"\nbench: interrupted ({_received_signal or 'SIGINT'})", file=sys.stderr)
        status = 130
    finally:
        dropped = admin.drop_all() if admin._conn is not None else []
        admin.close()
        if dropped:
            log(
                f"\ndropped {len(dropped)} bench databases; {time.monotonic() - started:.0f} s "
                "in all"
            )
    if args.json and figures:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    return status


def _versions() -> str:
    from importlib.metadata import version

    return (
        f"Python {platform.python_version()}, Django {version('django')}, "
        f"Oscar {version('django-oscar')}"
    )


if __name__ == "__main__":
    sys.exit(main())
