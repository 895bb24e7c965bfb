"""Helpers shared by the bench scripts: database URLs, admin connection, subprocesses.

Only the standard library and psycopg here: run.py imports this before Django is set up.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PROJECT_DIR = Path(__file__).resolve().parent.parent
BENCH_DIR = PROJECT_DIR / "bench"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/omnichannel_bench"

#: Databases the bench never creates nor drops, whatever DATABASE_URL says.
PROTECTED_NAMES = {"postgres", "template0", "template1", "test", "root"}
_SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")


class BenchError(Exception):
    """A problem the user must fix (no database server, bad URL): printed without traceback."""


def split_url(url: str) -> tuple[str, str]:
    """(URL without the database name, database name) of a postgres:// URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        raise BenchError(
            f"DATABASE_URL must be a PostgreSQL URL (postgres://...), not {redact(url)!r}"
        )
    name = parts.path.lstrip("/")
    if not name:
        raise BenchError(f"DATABASE_URL has no database name: {redact(url)!r}")
    if not _SAFE_NAME.match(name) or name in PROTECTED_NAMES:
        raise BenchError(
            f"Refusing to use database name {name!r}: the bench creates and drops databases "
            "named after it; pick a dedicated lower-case name such as 'omnichannel_bench'."
        )
    return urlunsplit(parts._replace(path="")), name


def with_db(url: str, name: str) -> str:
    """The same server URL, pointing at database ``name``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def redact(url: str) -> str:
    """The URL with any password hidden, for messages."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def conninfo(url: str) -> str:
    """A libpq connection string; psycopg accepts postgres:// URLs but not postgres+... ones."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql"))


class Admin:
    """Creates and drops the bench's databases through the server's maintenance database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.server_url, self.base_name = split_url(url)
        self.created: list[str] = []
        self._conn = None

    def connect(self) -> None:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - dev extra missing
            raise BenchError("psycopg is not installed: run `make install` first") from exc
        maintenance = with_db(self.url, "postgres")
        try:
            self._conn = psycopg.connect(conninfo(maintenance), autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise BenchError(
                f"Cannot reach PostgreSQL at {redact(self.server_url)} ({first_line}).\n"
                "Start PostgreSQL or point DATABASE_URL at one, e.g.\n"
                f"  DATABASE_URL={DEFAULT_DATABASE_URL} python bench/run.py"
            ) from exc
        self.server_version = self._conn.info.server_version
        # One run at a time per base name: a second run would drop the first one's databases
        # (create() drops leftovers). The session lock goes away with this connection.
        key = f"omnichannel-bench:{self.base_name}"
        locked = self._conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [key])
        if not locked.fetchone()[0]:
            self._conn.close()
            self._conn = None
            raise BenchError(
                f"Another bench run is using the {self.base_name}_* databases on this server. "
                "Wait for it to finish, or give this run its own base name, e.g.\n"
                f"  DATABASE_URL={with_db(DEFAULT_DATABASE_URL, self.base_name + '_2')} "
                "python bench/run.py"
            )

    def name(self, suffix: str) -> str:
        return f"{self.base_name}_{suffix}"

    def url_of(self, name: str) -> str:
        return with_db(self.url, name)

    def _check_ours(self, name: str) -> None:
        if not name.startswith(self.base_name + "_") or name in PROTECTED_NAMES:
            raise BenchError(f"Refusing to touch database {name!r}: not one of the bench's")

    def exists(self, name: str) -> bool:
        row = self._conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        return row is not None

    def create(self, name: str, template: str | None = None) -> str:
        self._check_ours(name)
        self.drop(name)  # a leftover of an interrupted run
        sql = f'CREATE DATABASE "{name}"'
        if template:
            self._check_ours(template)
            sql += f' TEMPLATE "{template}"'
        self._conn.execute(sql)
        if name not in self.created:
            self.created.append(name)
        return name

    def drop(self, name: str) -> None:
        self._check_ours(name)
        force = " WITH (FORCE)" if self.server_version >= 130000 else ""
        self._conn.execute(f'DROP DATABASE IF EXISTS "{name}"{force}')
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> list[str]:
        dropped = []
        for name in list(reversed(self.created)):
            try:
                self.drop(name)
                dropped.append(name)
            except Exception as exc:  # noqa: BLE001  (keep dropping the others)
                print(f"warning: could not drop database {name}: {exc}", file=sys.stderr)
        return dropped

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def django_env(database_url: str, *, omnichannel: bool, **extra: str) -> dict[str, str]:
    """Environment of a bench subprocess: the demo shop's settings, DEBUG off, no email out."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="sandbox.settings",
        DATABASE_URL=database_url,
        DJANGO_DEBUG="0",
        DJANGO_EMAIL_BACKEND="django.core.mail.backends.dummy.EmailBackend",
        OMNICHANNEL_VAR_DIR=str(PROJECT_DIR / "var" / "bench"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_DIR), env.get("PYTHONPATH", "")])),
        PYTHONHASHSEED="0",
    )
    if omnichannel:
        env.pop("OMNICHANNEL_DISABLED", None)
    else:
        env["OMNICHANNEL_DISABLED"] = "1"
    env.update(extra)
    return env


def run_script(script: str, args: list[str], env: dict[str, str], *, label: str) -> None:
    """Run ``bench/<script>`` with this Python; raise BenchError (with its output) on failure."""
    cmd = [sys.executable, str(BENCH_DIR / script), *args]
    proc = subprocess.run(cmd, env=env, cwd=PROJECT_DIR, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
        if proc.returncode < 0:
            how = f"was killed by {signal.Signals(-proc.returncode).name} from outside the bench"
        else:
            how = f"failed (exit {proc.returncode})"
        raise BenchError(f"{label} {how}:\n{tail}".rstrip())
    if proc.stderr.strip():
        # Warnings only; show them so nothing is hidden, but keep the report readable.
        for line in proc.stderr.strip().splitlines()[-5:]:
            print(f"    [{label}] {line}", file=sys.stderr)


def setup_django() -> None:
    """For the subprocess scripts: make the project importable and set Django up."""
    sys.path.insert(0, str(PROJECT_DIR))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sandbox.settings")
    import django

    django.setup()
