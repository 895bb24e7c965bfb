"""The OpenAPI schema and its docs page, served without any CDN."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.urls import reverse
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def test_the_schema_describes_every_endpoint_and_the_api_key():
    response = APIClient().get(reverse("omnichannel-api:schema"), {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert set(schema["paths"]) == {
        "/api/omnichannel/events/",
        "/api/omnichannel/identify/",
        "/api/omnichannel/devices/",
        "/api/omnichannel/devices/deactivate/",
        "/api/omnichannel/consents/",
        "/api/omnichannel/offline-orders/",
    }
    assert schema["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "`Api-Key <prefix>.<secret>`, as shown once when the key was created.",
    }
    for path in schema["paths"].values():
        responses = path["post"]["responses"]
        assert {"400", "401", "403", "429"} <= set(responses)


@pytest.mark.skipif(
    not apps.is_installed("drf_spectacular_sidecar"),
    reason="drf-spectacular-sidecar is not installed: the docs page is not served",
)
def test_the_docs_page_loads_swagger_ui_from_our_static_files():
    response = APIClient().get(reverse("omnichannel-api:docs"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    assert "cdn" not in html.lower() and "https://" not in html
    assert reverse("omnichannel-api:schema") in html


def test_without_the_sidecar_there_is_no_docs_page_but_the_schema(settings):
    from django.urls import NoReverseMatch, clear_url_caches, set_urlconf

    import omnichannel.api.urls
    import sandbox.urls

    installed = [app for app in settings.INSTALLED_APPS if app != "drf_spectacular_sidecar"]
    from importlib import reload

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(apps, "is_installed", lambda name: name in installed)
            reload(omnichannel.api.urls)
            reload(sandbox.urls)
            clear_url_caches()
            set_urlconf(None)
            with pytest.raises(NoReverseMatch):
                reverse("omnichannel-api:docs")
            assert APIClient().get(reverse("omnichannel-api:schema")).status_code == 200
    finally:
        reload(omnichannel.api.urls)
        reload(sandbox.urls)
        clear_url_caches()
