"""`/api/v1/destinations/`: the destination controls (per-destination limits and the Default entry): list, read,
create, replace, change, delete, through `routes.services` as the page, the admin and `destconfig` do, so the
checks (`routes.destinations`) and the audit are the same. The Default entry (`default`) cannot be deleted (409)
nor renamed (400 at `destination`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from django.db import transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from delivery.models import BounceProfile
from esaroutes.api import conditional, views
from routes import destinations, services
from routes.models import DefaultDestinationProtected, DestinationControl

INT_MAX = 2**31 - 1  # what the database's integer columns hold; the range rules are the services'


class DestinationConflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = destinations.DEFAULT_PROTECTED
    default_code = "conflict"


class DestinationControlSerializer(serializers.Serializer[DestinationControl]):
    id = serializers.IntegerField(read_only=True)
    destination = serializers.CharField(read_only=True)
    display_destination = serializers.SerializerMethodField()
    is_default = serializers.BooleanField(read_only=True)
    max_connections = serializers.IntegerField(max_value=INT_MAX, read_only=True)
    max_messages_per_connection = serializers.IntegerField(max_value=INT_MAX, read_only=True)
    recipient_limit = serializers.IntegerField(max_value=INT_MAX, read_only=True, allow_null=True)
    recipient_minutes = serializers.IntegerField(max_value=INT_MAX, read_only=True, allow_null=True)
    limit_scope = serializers.ChoiceField(choices=DestinationControl.LimitScope.choices, read_only=True)
    ip_preference = serializers.ChoiceField(choices=DestinationControl.IPPreference.choices, read_only=True)
    tls = serializers.ChoiceField(choices=DestinationControl.TLS.choices, read_only=True)
    bounce_profile = serializers.IntegerField(source="bounce_profile_id", read_only=True, allow_null=True)
    updated_at = serializers.DateTimeField(read_only=True)

    def get_display_destination(self, control: DestinationControl) -> str:
        return destinations.display_destination(control.destination)


class DestinationControlInputSerializer(serializers.Serializer[Any]):
    destination = serializers.CharField(
        max_length=300, help_text="example.com, .example.com, an IP address, or default"
    )
    max_connections = serializers.IntegerField(default=destinations.DEFAULT_MAX_CONNECTIONS)
    max_messages_per_connection = serializers.IntegerField(default=destinations.DEFAULT_MAX_MESSAGES_PER_CONNECTION)
    recipient_limit = serializers.IntegerField(allow_null=True, default=None)
    recipient_minutes = serializers.IntegerField(allow_null=True, default=None)
    limit_scope = serializers.ChoiceField(
        choices=DestinationControl.LimitScope.choices, default=destinations.SCOPE_DOMAIN
    )
    ip_preference = serializers.ChoiceField(
        choices=DestinationControl.IPPreference.choices, default=destinations.DEFAULT_IP_PREFERENCE
    )
    tls = serializers.ChoiceField(choices=DestinationControl.TLS.choices, default=destinations.DEFAULT_TLS)
    bounce_profile = serializers.PrimaryKeyRelatedField(
        queryset=BounceProfile.objects.all(), allow_null=True, default=None
    )


def destination_data(validated: dict[str, Any]) -> services.DestinationData:
    bounce = validated["bounce_profile"]
    return services.DestinationData(
        destination=validated["destination"],
        max_connections=validated["max_connections"],
        max_messages_per_connection=validated["max_messages_per_connection"],
        recipient_limit=validated["recipient_limit"],
        recipient_minutes=validated["recipient_minutes"],
        limit_scope=validated["limit_scope"],
        ip_preference=validated["ip_preference"],
        tls=validated["tls"],
        bounce_profile_id=bounce.pk if bounce is not None else None,
    )


def read_destination(pk: int, *, lock: bool = False) -> DestinationControl:
    rows = DestinationControl.objects.select_related("bounce_profile")
    return get_object_or_404(rows.select_for_update(of=("self",)) if lock else rows, pk=pk)


class DestinationList(views.ApiView):
    read_capability = "destinations.view"
    write_capability = "destinations.change"
    serializer_class = DestinationControlSerializer

    @extend_schema(responses=DestinationControlSerializer(many=True))
    def get(self, request: Request) -> Response:
        rows = self.paginate_queryset(DestinationControl.objects.all())
        return self.get_paginated_response(DestinationControlSerializer(cast(Any, rows), many=True).data)

    @extend_schema(request=DestinationControlInputSerializer, responses={201: DestinationControlSerializer})
    def post(self, request: Request) -> Response:
        body = DestinationControlInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            control = services.create_destination(
                data=destination_data(body.validated_data), actor=views.actor(request)
            )
        except services.DestinationInvalid as exc:
            raise serializers.ValidationError(exc.problems) from None
        data = DestinationControlSerializer(read_destination(control.pk)).data
        response = Response(data, status=status.HTTP_201_CREATED)
        response["ETag"] = conditional.etag(data)
        response["Location"] = request.build_absolute_uri(f"{control.pk}/")
        return response


class DestinationDetail(views.ApiView):
    read_capability = "destinations.view"
    write_capability = "destinations.change"
    serializer_class = DestinationControlSerializer

    def get(self, request: Request, pk: int) -> Response:
        return Response(DestinationControlSerializer(read_destination(pk)).data)

    @extend_schema(request=DestinationControlInputSerializer, responses=DestinationControlSerializer)
    def put(self, request: Request, pk: int) -> Response:
        return self._write(request, pk, partial=False)

    @extend_schema(request=DestinationControlInputSerializer, responses=DestinationControlSerializer)
    def patch(self, request: Request, pk: int) -> Response:
        return self._write(request, pk, partial=True)

    @extend_schema(responses={204: None, 409: OpenApiResponse(description="The Default entry cannot be deleted")})
    def delete(self, request: Request, pk: int) -> Response:
        with transaction.atomic():
            control = read_destination(pk, lock=True)
            conditional.require_match(request, DestinationControlSerializer(control).data)
            try:
                services.delete_destination(destination_id=control.pk, actor=views.actor(request))
            except DefaultDestinationProtected as exc:
                raise DestinationConflict(str(exc)) from None
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _write(self, request: Request, pk: int, *, partial: bool) -> Response:
        body = DestinationControlInputSerializer(data=request.data, partial=partial)
        body.is_valid(raise_exception=True)
        with transaction.atomic():
            control = read_destination(pk, lock=True)
            conditional.require_match(request, DestinationControlSerializer(control).data)
            if partial:
                given = {k: v for k, v in body.validated_data.items() if k in request.data}
                if "bounce_profile" in given:
                    given["bounce_profile_id"] = getattr(given.pop("bounce_profile"), "pk", None)
                data = dataclasses.replace(services.DestinationData.of(control), **given)
            else:
                data = destination_data(body.validated_data)
            try:
                services.update_destination(destination_id=control.pk, data=data, actor=views.actor(request))
            except services.DestinationInvalid as exc:
                raise serializers.ValidationError(exc.problems) from None
        answer = DestinationControlSerializer(read_destination(pk)).data
        response = Response(answer)
        response["ETag"] = conditional.etag(answer)  # the If-Match of the next write
        return response
