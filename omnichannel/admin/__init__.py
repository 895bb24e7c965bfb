"""Django admin of the omnichannel app (autodiscovered by ``django.contrib.admin``).

Each sub-module registers the admins of one part of the app.
"""

from . import (
    analytics,  # noqa: F401  (registers the conversion admin)
    api,  # noqa: F401  (registers the API key admin)
    campaigns,  # noqa: F401  (registers the campaign and enrollment admins)
    messages,  # noqa: F401  (registers the message, outbox, suppression admins)
    profiles,  # noqa: F401  (registers the profile admins)
    segments,  # noqa: F401  (registers the segment and snapshot admins)
)
