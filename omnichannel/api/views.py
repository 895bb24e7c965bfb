"""The API's endpoints: validate, call a service in omnichannel.api.services, respond.

Every endpoint needs ``Authorization: Api-Key <prefix>.<secret>`` (401 without a valid key)
and its own scope (403), and is rate limited per key (429). Bodies are JSON. Writes are
committed before the response is sent (no ATOMIC_REQUESTS needed, none assumed).
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.utils import timezone
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework import serializers, status
from rest_framework.exceptions import APIException
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ..conf import app_settings
from . import services
from .authentication import ApiKeyAuthentication
from .models import Scope
from .permissions import HasScope
from .serializers import (
    ConsentsResultSerializer,
    ConsentsSerializer,
    DetailSerializer,
    DeviceDeactivateResultSerializer,
    DeviceDeactivateSerializer,
    DeviceResultSerializer,
    DeviceSerializer,
    EventBatchResultSerializer,
    EventBatchSerializer,
    IdentifyResultSerializer,
    IdentifySerializer,
    OfflineOrderResultSerializer,
    OfflineOrderSerializer,
)
from .throttling import ApiKeyRateThrottle

#: The answers every endpoint can give besides its own.
ERRORS = {
    400: OpenApiResponse(
        OpenApiTypes.OBJECT,
        description="Invalid input: a JSON object keyed by field (list items by index).",
    ),
    401: OpenApiResponse(DetailSerializer, description="No, invalid or revoked API key."),
    403: OpenApiResponse(DetailSerializer, description="The key lacks this endpoint's scope."),
    406: OpenApiResponse(DetailSerializer, description="The Accept header excludes JSON."),
    413: OpenApiResponse(
        DetailSerializer, description="The body is larger than API_MAX_REQUEST_BYTES."
    ),
    415: OpenApiResponse(DetailSerializer, description="The body is not application/json."),
    429: OpenApiResponse(
        DetailSerializer, description="Rate limit of the key exceeded: see Retry-After."
    ),
}


class RequestTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "request_too_large"


def responses(ok: dict[int, Any]) -> dict[int, Any]:
    return {**ok, **ERRORS}


class ApiView(APIView):
    """Base of every endpoint: API-key authentication, a scope, a rate limit, JSON only."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [HasScope]
    throttle_classes = [ApiKeyRateThrottle]
    parser_classes = [JSONParser]
    renderer_classes = [JSONRenderer]
    # Set here, so a host needs no REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"] for our schema.
    schema = AutoSchema()
    required_scope: ClassVar[str]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        # Refuse a huge body before reading it (DRF's JSON parser reads whatever comes). A
        # chunked body has no length: cap it in the web server in front (client_max_body_size).
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit = app_settings.API_MAX_REQUEST_BYTES
        if limit and length > limit:
            raise RequestTooLarge(
                f"The body has {length} bytes; at most {limit} are accepted. Send fewer events "
                "per request."
            )

    def validated(self, serializer_class: type[serializers.Serializer]) -> Any:
        serializer = serializer_class(data=self.request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data


class EventsView(ApiView):
    required_scope = Scope.EVENTS

    @extend_schema(
        operation_id="events_create",
        summary="Send a batch of events",
        description=(
            "All or nothing: if any event is invalid, the answer is 400 with the errors under "
            "each event's index and nothing is stored. Events whose client_id this key already "
            "sent are not stored again (duplicate: true)."
        ),
        request=EventBatchSerializer,
        responses=responses(
            {
                201: EventBatchResultSerializer,
                200: OpenApiResponse(
                    EventBatchResultSerializer, description="Every event was a duplicate."
                ),
            }
        ),
        examples=[
            OpenApiExample(
                "Two app events",
                request_only=True,
                value={
                    "events": [
                        {
                            "client_id": "2c1d0e9e-6f1a-4c1b-a1d0-000000000001",
                            "type": "product_viewed",
                            "anonymous_id": "install-7f3a",
                            "sku": "FRIDGE-300",
                        },
                        {
                            "client_id": "2c1d0e9e-6f1a-4c1b-a1d0-000000000002",
                            "type": "wishlist_line_added",
                            "anonymous_id": "install-7f3a",
                            "sku": "FRIDGE-300",
                        },
                    ]
                },
            )
        ],
    )
    def post(self, request: Request) -> Response:
        data = self.validated(EventBatchSerializer)
        results = services.store_events(request.auth, data["events"], now=timezone.now())
        stored = sum(not result.duplicate for result in results)
        body = EventBatchResultSerializer(
            {"stored": stored, "duplicates": len(results) - stored, "events": results}
        ).data
        return Response(body, status=status.HTTP_201_CREATED if stored else status.HTTP_200_OK)


class IdentifyView(ApiView):
    required_scope = Scope.IDENTIFY

    @extend_schema(
        operation_id="identify_create",
        summary="Link an anonymous install or visitor to an email, phone, card or user",
        description=(
            "Records one event naming everything given; the fold task attaches it to the "
            "person's profile and merges profiles it proves to be one person (as it does for "
            "the web shop), within the fold interval. `profile` is the profile that holds the "
            "strongest identity given at the time of the call, if any."
        ),
        request=IdentifySerializer,
        responses=responses({202: IdentifyResultSerializer}),
    )
    def post(self, request: Request) -> Response:
        data = self.validated(IdentifySerializer)
        result = services.record_identify(request.auth, data, now=timezone.now())
        body = IdentifyResultSerializer(
            {
                "event_id": result.event.pk,
                "profile": result.profile.uuid if result.profile else None,
                "status": "pending",
            }
        ).data
        return Response(body, status=status.HTTP_202_ACCEPTED)


class DevicesView(ApiView):
    required_scope = Scope.DEVICES

    @extend_schema(
        operation_id="devices_create",
        summary="Register (or update) a push device: FCM, APNs or Web Push",
        description=(
            "Creates the device on django-push-notifications' models, or updates the one with "
            "this registration_id (201 created, 200 updated); `active: false` stops sending to "
            "it. The token is also recorded as a device identity of the person (user_id, "
            "anonymous_id), so pushes reach an app user who never signed in."
        ),
        request=DeviceSerializer,
        responses=responses({201: DeviceResultSerializer, 200: DeviceResultSerializer}),
    )
    def post(self, request: Request) -> Response:
        data = self.validated(DeviceSerializer)
        try:
            result = services.register_device(request.auth, data, now=timezone.now())
        except services.DeviceInvalid as exc:
            raise serializers.ValidationError(exc.errors) from exc
        body = DeviceResultSerializer(
            {
                "id": result.device.pk,
                "type": result.type,
                "registration_id": result.device.registration_id,
                "active": result.device.active,
                "created": result.created,
                "event_id": result.event.pk if result.event else None,
            }
        ).data
        return Response(body, status=status.HTTP_201_CREATED if result.created else 200)


class DeviceDeactivateView(ApiView):
    required_scope = Scope.DEVICES

    @extend_schema(
        operation_id="devices_deactivate",
        summary="Stop sending to a device (the app signed out or lost its permission)",
        request=DeviceDeactivateSerializer,
        responses=responses(
            {
                200: DeviceDeactivateResultSerializer,
                404: OpenApiResponse(DetailSerializer, description="No such device."),
            }
        ),
    )
    def post(self, request: Request) -> Response:
        data = self.validated(DeviceDeactivateSerializer)
        count = services.deactivate_device(
            type=data["type"], registration_id=data["registration_id"]
        )
        if not count:
            return Response({"detail": "No such device."}, status=status.HTTP_404_NOT_FOUND)
        return Response(DeviceDeactivateResultSerializer({"deactivated": count}).data)


class ConsentsView(ApiView):
    required_scope = Scope.CONSENTS

    @extend_schema(
        operation_id="consents_create",
        summary="Grant or withdraw consents per channel and purpose",
        description=(
            "Recorded with the key's source on the profile holding the strongest identity "
            "given; when nobody holds any of them yet, a profile is made for them at once (a "
            "consent cannot wait for the fold). The history is kept; the latest record wins."
        ),
        request=ConsentsSerializer,
        responses=responses({201: ConsentsResultSerializer}),
    )
    def post(self, request: Request) -> Response:
        data = self.validated(ConsentsSerializer)
        result = services.record_consents(request.auth, data, now=timezone.now())
        body = ConsentsResultSerializer(
            {
                "profile": result.profile.uuid,
                "profile_created": result.created,
                "consents": result.consents,
            }
        ).data
        return Response(body, status=status.HTTP_201_CREATED)


class OfflineOrdersView(ApiView):
    required_scope = Scope.ORDERS

    @extend_schema(
        operation_id="offline_orders_create",
        summary="Record a purchase made at a till",
        description=(
            "Becomes an order_placed event of source offline, shaped like an online order's, "
            "attached by the fold to the profile of the phone, loyalty card or email given. A "
            "line whose product is not found refuses the order (400, errors under lines.<index>) "
            "unless allow_unknown_products is true. Stored once per key and order number: a "
            "retry answers 200 with duplicate: true."
        ),
        request=OfflineOrderSerializer,
        responses=responses(
            {
                201: OfflineOrderResultSerializer,
                200: OpenApiResponse(
                    OfflineOrderResultSerializer, description="Already stored (a retry)."
                ),
            }
        ),
    )
    def post(self, request: Request) -> Response:
        data = self.validated(OfflineOrderSerializer)
        (result,) = services.record_offline_orders(request.auth, [data], now=timezone.now())
        if result.rejected:
            raise serializers.ValidationError(result.errors)
        body = OfflineOrderResultSerializer(result).data
        return Response(body, status=200 if result.duplicate else status.HTTP_201_CREATED)


# --- schema and docs ----------------------------------------------------------------------------

#: Our schema is self-contained: these settings apply to it only (a host's own
#: SPECTACULAR_SETTINGS for its other APIs are left alone).
SCHEMA_SETTINGS = {
    "TITLE": "Omnichannel API",
    "DESCRIPTION": (
        "Events, identities, push devices, consents and offline orders for the mobile app and "
        "the tills. Authenticate with `Authorization: Api-Key <prefix>.<secret>`."
    ),
    "VERSION": "1",
    "PREPROCESSING_HOOKS": ["omnichannel.api.schema.only_omnichannel_endpoints"],
    "COMPONENT_SPLIT_REQUEST": True,
}


class SchemaView(SpectacularAPIView):
    """The OpenAPI 3 schema of this API (public: it holds no data)."""

    custom_settings = SCHEMA_SETTINGS
    authentication_classes: list[Any] = []


class DocsView(SpectacularSwaggerView):
    """Swagger UI, served from drf-spectacular-sidecar's static files (no CDN)."""

    url_name = "omnichannel-api:schema"
    title = "Omnichannel API"
    authentication_classes: list[Any] = []

    @staticmethod
    def _swagger_ui_resource(filename: str) -> str:
        from django.templatetags.static import static

        return static(f"drf_spectacular_sidecar/swagger-ui-dist/{filename}")

    @staticmethod
    def _swagger_ui_favicon() -> str:
        from django.templatetags.static import static

        return static("drf_spectacular_sidecar/swagger-ui-dist/favicon-32x32.png")
