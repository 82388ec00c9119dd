"""A tiny API over relay networks, to test the shared plumbing alone (used with @pytest.mark.urls)."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.shortcuts import get_object_or_404
from django.urls import path
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from esaroutes.api import conditional, views
from routes import audit
from routes.models import RelayNetwork


class RelaySerializer(serializers.ModelSerializer[RelayNetwork]):
    class Meta:
        model = RelayNetwork
        fields = ["id", "network", "comment"]


class CommentSerializer(serializers.Serializer[Any]):
    comment = serializers.CharField(max_length=20)


class RelayList(views.ApiView):
    read_capability = "access.view"
    write_capability = "access.change"

    def get(self, request: Request) -> Response:
        rows = self.paginate_queryset(RelayNetwork.objects.all())
        return self.get_paginated_response(RelaySerializer(rows, many=True).data)


class RelayDetail(views.ApiView):
    read_capability = "access.view"
    write_capability = "access.change"

    def get(self, request: Request, pk: int) -> Response:
        return Response(RelaySerializer(get_object_or_404(RelayNetwork, pk=pk)).data)

    def patch(self, request: Request, pk: int) -> Response:
        data = CommentSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        with transaction.atomic():
            relay = get_object_or_404(RelayNetwork.objects.select_for_update(), pk=pk)
            conditional.require_match(request, RelaySerializer(relay).data)
            relay.comment = data.validated_data["comment"]
            relay.save()
            audit.record_change(views.actor(request), "update", relay, after=audit.describe(relay))
        return Response(RelaySerializer(relay).data)


urlpatterns = [
    path("relays/", RelayList.as_view(), name="relays"),
    path("relays/<int:pk>/", RelayDetail.as_view(), name="relay"),
]
