"""Settings of the demo shop.

Embedded default: SQLite and a Celery broker on the filesystem (no server needed).
Set DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/omnichannel) and CELERY_BROKER_URL
(redis://127.0.0.1:6379/0 or amqp://guest:guest@127.0.0.1:5672//) to run on real services.
"""

import os
from pathlib import Path

import dj_database_url
from oscar.defaults import *  # noqa: F403

BASE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BASE_DIR.parent
VAR_DIR = Path(os.environ.get("OMNICHANNEL_VAR_DIR", PROJECT_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "sandbox-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,testserver").split(",")

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'sandbox.sqlite3'}"),
        conn_max_age=0,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server, the worker and beat share one SQLite file: WAL lets readers go on while
    # one writes, and IMMEDIATE transactions take the write lock up front instead of failing
    # with "database is locked" half-way through.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.sites",
    "django.contrib.flatpages",
    "oscar.config.Shop",
    "oscar.apps.analytics.apps.AnalyticsConfig",
    "oscar.apps.checkout.apps.CheckoutConfig",
    "oscar.apps.address.apps.AddressConfig",
    "oscar.apps.shipping.apps.ShippingConfig",
    "oscar.apps.catalogue.apps.CatalogueConfig",
    "oscar.apps.catalogue.reviews.apps.CatalogueReviewsConfig",
    "oscar.apps.communication.apps.CommunicationConfig",
    "oscar.apps.partner.apps.PartnerConfig",
    "oscar.apps.basket.apps.BasketConfig",
    "oscar.apps.payment.apps.PaymentConfig",
    "oscar.apps.offer.apps.OfferConfig",
    "oscar.apps.order.apps.OrderConfig",
    "oscar.apps.customer.apps.CustomerConfig",
    "oscar.apps.search.apps.SearchConfig",
    "oscar.apps.voucher.apps.VoucherConfig",
    "oscar.apps.wishlists.apps.WishlistsConfig",
    "oscar.apps.dashboard.apps.DashboardConfig",
    "oscar.apps.dashboard.reports.apps.ReportsDashboardConfig",
    "oscar.apps.dashboard.users.apps.UsersDashboardConfig",
    "oscar.apps.dashboard.orders.apps.OrdersDashboardConfig",
    "oscar.apps.dashboard.catalogue.apps.CatalogueDashboardConfig",
    "oscar.apps.dashboard.offers.apps.OffersDashboardConfig",
    "oscar.apps.dashboard.partners.apps.PartnersDashboardConfig",
    "oscar.apps.dashboard.pages.apps.PagesDashboardConfig",
    "oscar.apps.dashboard.ranges.apps.RangesDashboardConfig",
    "oscar.apps.dashboard.reviews.apps.ReviewsDashboardConfig",
    "oscar.apps.dashboard.vouchers.apps.VouchersDashboardConfig",
    "oscar.apps.dashboard.communications.apps.CommunicationsDashboardConfig",
    "oscar.apps.dashboard.shipping.apps.ShippingDashboardConfig",
    "widget_tweaks",
    "haystack",
    "treebeard",
    "sorl.thumbnail",
    "django_tables2",
    "django_celery_beat",
    "push_notifications",
    "anymail",
    # The omnichannel API (omnichannel/api/, docs/api.md) and its OpenAPI schema and docs page.
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "omnichannel",
    "sandbox",
]
# The bench compares the shop with and without our app in one run.
if os.environ.get("OMNICHANNEL_DISABLED") == "1":
    INSTALLED_APPS.remove("omnichannel")

SITE_ID = 1

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.contrib.flatpages.middleware.FlatpageFallbackMiddleware",
    "oscar.apps.basket.middleware.BasketMiddleware",
    "omnichannel.profiles.middleware.VisitorMiddleware",
]
if "omnichannel" not in INSTALLED_APPS:
    MIDDLEWARE.remove("omnichannel.profiles.middleware.VisitorMiddleware")

ROOT_URLCONF = "sandbox.urls"
WSGI_APPLICATION = "sandbox.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [PROJECT_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.debug",
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.template.context_processors.i18n",
                "django.contrib.messages.context_processors.messages",
                "oscar.apps.search.context_processors.search_form",
                "oscar.apps.checkout.context_processors.checkout",
                "oscar.apps.communication.notifications.context_processors.notifications",
                "oscar.core.context_processors.metadata",
            ],
        },
    }
]

AUTHENTICATION_BACKENDS = [
    "oscar.apps.customer.auth_backends.EmailBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_REDIRECT_URL = "/"

# Oscar's catalogue pages search through haystack; its simple engine cannot filter on
# is_public/structure, so the demo uses Whoosh (pure Python, an index under var/).
HAYSTACK_CONNECTIONS = {
    "default": {
        "ENGINE": "haystack.backends.whoosh_backend.WhooshEngine",
        "PATH": str(VAR_DIR / "whoosh_index"),
    }
}

LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
MEDIA_URL = "/media/"
MEDIA_ROOT = VAR_DIR / "media"

EMAIL_BACKEND = os.environ.get(
    "DJANGO_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend"
)

OSCAR_SHOP_NAME = "Omnichannel demo shop"
OSCAR_SHOP_TAGLINE = "django-oscar-omnichannel"
OSCAR_DEFAULT_CURRENCY = "GBP"
OSCAR_ALLOW_ANON_CHECKOUT = True
OSCAR_ALLOW_GUEST_CHECKOUT_WITH_ACCOUNT = True
OSCAR_SEND_REGISTRATION_EMAIL = False
OSCAR_REQUIRED_ADDRESS_FIELDS = ("first_name", "last_name", "line1", "line4", "postcode", "country")
PHONENUMBER_DEFAULT_REGION = "GB"

# --- django-oscar-omnichannel -----------------------------------------------------------------
# Every channel of the demo writes to the outbox (Admin > Omnichannel > Outbox) instead of
# calling a provider; remove "OUTBOX": True and fill in the provider's options to send for real.
OMNICHANNEL = {
    "DEFAULT_PHONE_REGION": "GB",
    "EVENT_FOLD_INTERVAL": int(os.environ.get("OMNICHANNEL_EVENT_FOLD_INTERVAL", "10")),
    "SITE_URL": os.environ.get("OMNICHANNEL_SITE_URL", "http://127.0.0.1:8000"),
    "COST_CURRENCY": "GBP",
    "CHANNELS": {
        "email": {
            "BACKEND": "omnichannel.channels.email.EmailChannel",
            "COST": "0.0008",
            "OPTIONS": {"OUTBOX": True, "FROM_EMAIL": "Omnichannel demo shop <shop@example.com>"},
        },
        "webpush": {
            "BACKEND": "omnichannel.channels.push.WebPushChannel",
            "COST": "0",
            "OPTIONS": {"OUTBOX": True},
        },
        "push": {
            "BACKEND": "omnichannel.channels.push.MobilePushChannel",
            "COST": "0",
            "OPTIONS": {"OUTBOX": True},
        },
        "telegram": {
            "BACKEND": "omnichannel.channels.telegram.TelegramChannel",
            "COST": "0.002",
            "OPTIONS": {
                "OUTBOX": True,
                "BOT_TOKEN": "demo",
                "BOT_USERNAME": "omnichannel_demo_bot",
                "WEBHOOK_SECRET": os.environ.get(
                    "OMNICHANNEL_TELEGRAM_WEBHOOK_SECRET", "demo-webhook-secret"
                ),
            },
        },
        "sms": {
            "BACKEND": "omnichannel.channels.sms.SmsChannel",
            "COST": "0.04",
            "OPTIONS": {"OUTBOX": True, "FROM": "OmniDemo"},
        },
    },
}

# --- Django REST framework: the omnichannel API sets its own authentication, permissions,
# throttles and schema per view; nothing global is needed beyond the schema class for hosts
# that generate one schema of all their APIs. -----------------------------------------------
REST_FRAMEWORK = {"DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema"}

# --- Celery ------------------------------------------------------------------------------------
# Embedded default: kombu's filesystem transport needs no server; the worker and the web
# process exchange messages through files under var/celery/.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _queue_dir = VAR_DIR / "celery" / "queue"
    _queue_dir.mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "store_processed": False,
        # kombu's default is ./control, relative to wherever the process was started.
        "control_folder": str(VAR_DIR / "celery" / "control"),
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "omnichannel": {"handlers": ["console"], "level": "INFO"},
    },
}
