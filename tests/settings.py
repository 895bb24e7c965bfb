"""Test settings: the demo shop's settings, so what is tested is what the demo runs.

DATABASE_URL picks the database (SQLite file by default, PostgreSQL in CI's second pass).
"""

import os

os.environ.setdefault(
    "OMNICHANNEL_VAR_DIR", os.path.join(os.path.dirname(__file__), "..", "var", "test")
)

from sandbox.settings import *  # noqa: F403
from sandbox.settings import DATABASES, VAR_DIR

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not :memory:, so a Celery worker started by a test sees the same database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "memory://")
CELERY_TASK_ALWAYS_EAGER = False
LOGGING = {"version": 1, "disable_existing_loggers": False}

# Added for tests/integration/test_celery_worker.py: the Celery worker that test starts uses
# these settings too, and must open the test database of the pytest run that started it (the
# SQLite file above, or test_<NAME> on PostgreSQL), not the database the URL names.
if os.environ.get("OMNICHANNEL_WORKER_DATABASE_NAME"):
    DATABASES["default"]["NAME"] = os.environ["OMNICHANNEL_WORKER_DATABASE_NAME"]

# Tests do not browse the catalogue through search: no index to write on every product save.
HAYSTACK_CONNECTIONS = {"default": {"ENGINE": "haystack.backends.simple_backend.SimpleEngine"}}
HAYSTACK_SIGNAL_PROCESSOR = "haystack.signals.BaseSignalProcessor"
