"""URLs of the API: include them in the shop's urls.py under any prefix::

    path("api/omnichannel/", include("omnichannel.api.urls")),

The Swagger UI page (``docs/``) is served when drf-spectacular-sidecar is installed and
``"drf_spectacular_sidecar"`` is in INSTALLED_APPS (its files are static, no CDN); the schema
(``schema/``) is always served.
"""

from django.apps import apps
from django.urls import path

from . import views

app_name = "omnichannel-api"

urlpatterns = [
    path("events/", views.EventsView.as_view(), name="events"),
    path("identify/", views.IdentifyView.as_view(), name="identify"),
    path("devices/", views.DevicesView.as_view(), name="devices"),
    path("devices/deactivate/", views.DeviceDeactivateView.as_view(), name="devices-deactivate"),
    path("consents/", views.ConsentsView.as_view(), name="consents"),
    path("offline-orders/", views.OfflineOrdersView.as_view(), name="offline-orders"),
    path("schema/", views.SchemaView.as_view(), name="schema"),
]
if apps.is_installed("drf_spectacular_sidecar"):
    urlpatterns.append(path("docs/", views.DocsView.as_view(), name="docs"))
