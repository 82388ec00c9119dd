"""`/api/v1/destinations/`: the destination controls (per-destination limits and the Default entry): list, read,
create, replace, change, delete, through `routes.services` as the page, the admin and `destconfig` do, so the
checks (`routes.destinations`) and the audit are the same. The Default entry (`default`) cannot be deleted (409)
nor renamed (400 at `destination`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import serializers
from rest_framework.request import Request

from delivery.models import BounceProfile
from esaroutes.api import errors, views
from routes import destinations, services
from routes.models import DefaultDestinationProtected, DestinationControl

INT_MAX = 2**31 - 1  # what the database's integer columns hold; the range rules are the services'


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


class _Destinations(views.RowsView):
    read_capability = "destinations.view"
    write_capability = "destinations.change"
    serializer_class = DestinationControlSerializer
    input_class = DestinationControlInputSerializer
    model = DestinationControl


class DestinationList(_Destinations, views.CollectionView):
    def create(self, request: Request, data: dict[str, Any]) -> DestinationControl:
        with errors.refused(services.DestinationInvalid, lambda exc: exc.problems):
            new = services.DestinationData(**views.with_ids(data, "bounce_profile"))
            return services.create_destination(data=new, actor=views.actor(request))


@extend_schema_view(
    delete=extend_schema(responses={204: None, 409: OpenApiResponse(description="The Default entry cannot be deleted")})
)
class DestinationDetail(_Destinations, views.ObjectView):
    def change(self, request: Request, obj: DestinationControl, data: dict[str, Any], *, partial: bool) -> None:
        # A PUT's body has every field (the defaults fill in); a PATCH's only those it changes.
        changed = dataclasses.replace(services.DestinationData.of(obj), **views.with_ids(data, "bounce_profile"))
        with errors.refused(services.DestinationInvalid, lambda exc: exc.problems):
            services.update_destination(destination_id=obj.pk, data=changed, actor=views.actor(request))

    def remove(self, request: Request, obj: DestinationControl) -> None:
        try:
            services.delete_destination(destination_id=obj.pk, actor=views.actor(request))
        except DefaultDestinationProtected as exc:
            raise errors.Conflict(str(exc)) from None
