"""API throughput: events per second in batches of 100 against one event per request.

Run by bench/run.py on a fresh copy of the migrated template database; usable by hand on any
migrated database of the demo shop (it only adds an API key and events)::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/some_db DJANGO_DEBUG=0 \\
        python bench/api_bench.py --json /tmp/api.json

The API is served by gunicorn (sync workers) on 127.0.0.1, on a free port, with the demo shop's
settings and DEBUG off; client threads post over HTTP. Batched and single-event phases
alternate round by round (the order swapping each round), so load from elsewhere on the machine
falls on both alike. After the run every event is checked to be stored exactly once.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PROJECT_DIR, django_env, run_script, setup_django

PATH = "/api/omnichannel/events/"
TARGET_EVENTS_PER_S = 2000


# --- run by bench/run.py ------------------------------------------------------------------------


def run_api(admin, template: str, args) -> dict:
    """bench/run.py's part: a fresh copy of the template, this script in a subprocess."""
    print("\n== API: events per second, batches of 100 against single events (gunicorn) ==")
    name = admin.create(admin.name("api"), template=template)
    quick = getattr(args, "quick", False)
    options = [f"--rounds={2 if quick else 6}", f"--single-requests={150 if quick else 400}"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "api.json"
        print(f"  serving on loopback (load {os.getloadavg()[0]:.1f})...", flush=True)
        run_script(
            "api_bench.py",
            [*options, f"--json={out}"],
            django_env(admin.url_of(name), omnichannel=True),
            label="api",
        )
        result = json.loads(out.read_text())
    admin.drop(name)
    report_api(result)
    return result


def report_api(r: dict) -> None:
    batch, single = r["batch"], r["single"]
    print(
        f"    gunicorn {r['workers']} sync workers, {r['clients']} client threads, "
        f"CONN_MAX_AGE {r['conn_max_age']}; {r['sent']:,} events sent, {r['stored']:,} stored "
        f"once each; load average {r['load']:.1f} on {r['cpus']} CPUs"
    )
    print(
        f"    {'':28}{'events/s':>10}{'requests/s':>12}{'median':>9}{'p95':>9}{'events/CPU-s':>14}"
    )
    for label, x in ((f"batches of {r['batch_size']}", batch), ("one event per request", single)):
        per_cpu = f"{x['events_per_cpu_s']:,.0f}" if x["events_per_cpu_s"] else "-"
        print(
            f"    {label:28}{x['events_per_s']:>10,.0f}{x['requests_per_s']:>12,.1f}"
            f"{x['median_ms']:>7.0f}ms{x['p95_ms']:>7.0f}ms{per_cpu:>14}"
        )
    verdict = "met" if batch["events_per_s"] >= TARGET_EVENTS_PER_S else "not met"
    capacity = ""
    if batch["events_per_cpu_s"]:
        capacity = (
            f" (server side alone, at {batch['events_per_cpu_s']:,.0f} events per CPU-second, "
            f"would take {r['cpus'] * batch['events_per_cpu_s']:,.0f}/s on {r['cpus']} idle "
            "CPUs)"
        )
    print(
        f"    batches: {batch['events_per_s'] / single['events_per_s']:.0f}x the events/s of "
        f"single requests; target {TARGET_EVENTS_PER_S:,} events/s in batches: {verdict}"
        f"{capacity}"
    )


# --- the measurement ----------------------------------------------------------------------------


def wsgi(conn_max_age: int = 0):
    """gunicorn's app factory: the demo shop, with persistent database connections when
    ``conn_max_age`` > 0 (what a production deployment has, through CONN_MAX_AGE or a pooler;
    the demo's settings open a connection per request)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sandbox.settings")
    from django.conf import settings
    from django.core.wsgi import get_wsgi_application

    settings.DATABASES["default"]["CONN_MAX_AGE"] = conn_max_age
    settings.DATABASES["default"]["CONN_HEALTH_CHECKS"] = conn_max_age > 0
    return get_wsgi_application()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """gunicorn serving the demo shop on loopback, stopped (and waited for) on close()."""

    def __init__(self, *, workers: int, conn_max_age: int, log_path: Path) -> None:
        self.port = free_port()
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                f"--pythonpath={PROJECT_DIR / 'bench'}",
                f"api_bench:wsgi(conn_max_age={conn_max_age})",
                f"--bind=127.0.0.1:{self.port}",
                f"--workers={workers}",
                "--worker-class=sync",
                "--log-level=warning",
                "--timeout=120",
            ],
            cwd=PROJECT_DIR,
            env=os.environ.copy(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"gunicorn exited with {self.proc.returncode}: see {log_path}")
            try:
                status, _ = request(self.port, "GET", "/api/omnichannel/schema/", None, {})
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        self.close()
        raise SystemExit(f"gunicorn did not answer within 60 s: see {log_path}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (Linux /proc; 0 where unreadable)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / ticks


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def database_backends() -> list[int]:
    """PIDs of the PostgreSQL backends connected to this database (the server's workers hold
    one each, CONN_MAX_AGE); readable as /proc entries when the server runs on this machine."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        pids = [row[0] for row in cursor.fetchall()]
    connection.close()
    return pids


def request(port: int, method: str, path: str, body: bytes | None, headers: dict) -> tuple:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def make_event(tag: str, n: int, skus: list[str]) -> dict:
    event = {
        "client_id": f"{tag}-{n}",
        "type": "product_viewed" if n % 2 else "app_opened",
        "anonymous_id": f"install-{n % 997}",
        "payload": {"screen": "product", "n": n},
    }
    if n % 2 and skus:
        event["sku"] = skus[n % len(skus)]
    return event


def run_phase(
    port: int, headers: dict, bodies: list[bytes], clients: int, pids: list[int] | None = None
) -> dict:
    """Post every body from ``clients`` threads; wall time, per-request latencies, and the
    CPU time the server's processes (``pids``) spent meanwhile."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    queue = list(reversed(bodies))

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                body = queue.pop()
            started = time.perf_counter()
            status, content = request(port, "POST", PATH, body, headers)
            took = time.perf_counter() - started
            with lock:
                latencies.append(took)
                if status != 201:
                    errors.append(f"{status}: {content[:200]!r}")

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    cpu_before = cpu_seconds(pids or [])
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    cpu = cpu_seconds(pids or []) - cpu_before
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return {"wall_s": wall, "latencies": latencies, "cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-requests", type=int, default=20, help="per round")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--single-requests", type=int, default=400, help="per round")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn sync workers")
    parser.add_argument("--clients", type=int, default=4, help="client threads")
    parser.add_argument(
        "--conn-max-age",
        type=int,
        default=60,
        help="CONN_MAX_AGE of the server's database connections (0: one per request)",
    )
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()

    setup_django()
    from django.db import connection
    from oscar.core.loading import get_model

    from omnichannel.api.models import ApiEventReceipt, ApiKey, Scope
    from omnichannel.profiles.models import Event

    key, raw = ApiKey.objects.create_key(
        name="bench", source="app", scopes=[Scope.EVENTS], rate_limit="1000000/second"
    )
    skus = list(
        get_model("partner", "StockRecord")
        .objects.exclude(partner_sku="")
        .values_list("partner_sku", flat=True)[:12]
    )
    events_before = Event.objects.count()
    connection.close()  # the server's workers do the work from here on

    headers = {"Authorization": f"Api-Key {raw}", "Content-Type": "application/json"}
    log_dir = PROJECT_DIR / "var" / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    server = Server(
        workers=args.workers,
        conn_max_age=args.conn_max_age,
        log_path=log_dir / "api-gunicorn.log",
    )
    counter = 0

    def bodies(tag: str, requests: int, size: int) -> list[bytes]:
        nonlocal counter
        out = []
        for _ in range(requests):
            events = [make_event(tag, counter + i, skus) for i in range(size)]
            counter += size
            out.append(json.dumps({"events": events}).encode())
        return out

    results: dict[str, dict] = {
        "batch": {"events": 0, "wall_s": 0.0, "cpu_s": 0.0, "latencies": []},
        "single": {"events": 0, "wall_s": 0.0, "cpu_s": 0.0, "latencies": []},
    }
    try:
        # Warm-up: every worker imports, connects and compiles its first request.
        run_phase(server.port, headers, bodies("warm", args.workers * 4, 10), args.clients)
        # CPU spent by the server side: gunicorn's workers and their database backends.
        pids = children(server.proc.pid) + database_backends()
        for round_number in range(args.rounds):
            phases = [
                ("batch", args.batch_requests, args.batch_size),
                ("single", args.single_requests, 1),
            ]
            if round_number % 2:
                phases.reverse()
            for name, count, size in phases:
                payload = bodies(name, count, size)
                phase = run_phase(server.port, headers, payload, args.clients, pids)
                results[name]["events"] += count * size
                results[name]["wall_s"] += phase["wall_s"]
                results[name]["cpu_s"] += phase["cpu_s"]
                results[name]["latencies"] += phase["latencies"]
    finally:
        server.close()

    stored = Event.objects.count() - events_before
    receipts = ApiEventReceipt.objects.filter(key=key).count()
    figures = {
        "workers": args.workers,
        "clients": args.clients,
        "conn_max_age": args.conn_max_age,
        "batch_size": args.batch_size,
        "sent": counter,
        "stored": stored,
        "receipts": receipts,
        "server_processes": len(pids),
        "cpus": os.cpu_count(),
        "load": os.getloadavg()[0],
    }
    for name, result in results.items():
        figures[name] = {
            "events": result["events"],
            "requests": len(result["latencies"]),
            "wall_s": result["wall_s"],
            "events_per_s": result["events"] / result["wall_s"],
            "requests_per_s": len(result["latencies"]) / result["wall_s"],
            "server_cpu_s": result["cpu_s"],
            # Events per CPU-second of the server side (app + database): what the machine's
            # cores could take if nothing else ran on them (the client's own CPU aside).
            # Without persistent connections each request has a backend of its own that is
            # gone before it could be counted: the figure would leave the database out.
            "events_per_cpu_s": result["events"] / result["cpu_s"]
            if result["cpu_s"] and args.conn_max_age > 0
            else None,
            "median_ms": statistics.median(result["latencies"]) * 1000,
            "p95_ms": statistics.quantiles(result["latencies"], n=20)[-1] * 1000,
        }
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    else:
        print(json.dumps(figures, indent=2))
    if stored != counter or receipts != counter:
        raise SystemExit(f"sent {counter} events, stored {stored} with {receipts} receipts")


if __name__ == "__main__":
    main()
