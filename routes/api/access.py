"""`/api/v1/access/rat/`, `access/relay/`, `access/users/`: recipient access rules, relay networks and SMTP AUTH
users, through `routes.access.services` as the pages and the admin do (same checks, same audit). An SMTP user's
`password` is write-only: it is stored hashed and never read back. `access.view` reads, `access.change` writes.
"""

from __future__ import annotations

from typing import Any, cast

from django.core.exceptions import NON_FIELD_ERRORS
from django.db import models, transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from esaroutes.api import views
from routes.access import services
from routes.models import RecipientAccessRule, RelayNetwork, SmtpUser


class RatSerializer(serializers.Serializer[RecipientAccessRule]):
    id = serializers.IntegerField(read_only=True)
    domain = serializers.CharField(max_length=300)
    action = serializers.ChoiceField(choices=RecipientAccessRule.Action.choices)
    comment = serializers.CharField(max_length=255, allow_blank=True, default="")


class RelaySerializer(serializers.Serializer[RelayNetwork]):
    id = serializers.IntegerField(read_only=True)
    network = serializers.CharField(max_length=64, help_text="CIDR, IPv4 or IPv6")
    comment = serializers.CharField(max_length=255, allow_blank=True, default="")


class SmtpUserSerializer(serializers.Serializer[SmtpUser]):
    id = serializers.IntegerField(read_only=True)
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(
        max_length=1024, write_only=True, required=False, allow_blank=True, help_text="write-only; omit to keep"
    )
    is_active = serializers.BooleanField(default=True)


def invalid(exc: services.AccessInvalid) -> serializers.ValidationError:
    return serializers.ValidationError(
        {("non_field_errors" if k == NON_FIELD_ERRORS else k): v for k, v in exc.errors.items()}
    )


class _Table:
    model: type[models.Model]
    serializer: type[serializers.Serializer[Any]]
    natural_key = ""

    def save(self, request: Request, data: dict[str, Any], pk: int | None) -> models.Model:
        raise NotImplementedError

    def delete(self, request: Request, pk: int) -> None:
        raise NotImplementedError


class _List(views.ApiView):
    read_capability = "access.view"
    write_capability = "access.change"
    table: _Table

    def get(self, request: Request) -> Response:
        rows = self.paginate_queryset(self.table.model._default_manager.order_by("pk"))
        return self.get_paginated_response(self.table.serializer(cast(Any, rows), many=True).data)

    def post(self, request: Request) -> Response:
        body = self.table.serializer(data=request.data)
        body.is_valid(raise_exception=True)
        with transaction.atomic():
            try:
                self._refuse_duplicate(body.validated_data)
                row = self.table.save(request, body.validated_data, None)
            except services.AccessInvalid as exc:
                raise invalid(exc) from None
        return views.created(request, self.table.serializer(row).data, row.pk)

    def _refuse_duplicate(self, data: dict[str, Any]) -> None:
        """A POST creates: the services' save by natural key would change the existing row instead."""
        key = self.table.natural_key
        if key == "username" and SmtpUser.objects.filter(username=data[key].strip()).exists():
            raise services.AccessInvalid({key: ["This user already exists: change that one."]})
        if key == "domain":
            stored = services.normalize_rat_domain(data[key])
            if RecipientAccessRule.objects.filter(domain=stored).exists():
                raise services.AccessInvalid({key: ["This domain already has a rule: change that one."]})


class _Detail(views.ObjectView):
    read_capability = "access.view"
    write_capability = "access.change"
    table: _Table

    def read(self, pk: int, *, lock: bool = False) -> models.Model:
        rows = self.table.model._default_manager.all()
        return get_object_or_404(rows.select_for_update() if lock else rows, pk=pk)

    def change(self, request: Request, obj: models.Model, data: dict[str, Any], *, partial: bool) -> None:
        merged = {**self.represent(obj), **data} if partial else data
        try:
            self.table.save(request, merged, obj.pk)
        except services.AccessInvalid as exc:
            raise invalid(exc) from None

    def remove(self, request: Request, obj: models.Model) -> None:
        self.table.delete(request, obj.pk)


class _Rats(_Table):
    model = RecipientAccessRule
    serializer = RatSerializer
    natural_key = "domain"

    def save(self, request: Request, data: dict[str, Any], pk: int | None) -> models.Model:
        return services.rat_save(views.actor(request), data["domain"], data["action"], data["comment"], pk=pk)

    def delete(self, request: Request, pk: int) -> None:
        services.rat_delete(views.actor(request), pk)


class _Relays(_Table):
    model = RelayNetwork
    serializer = RelaySerializer

    def save(self, request: Request, data: dict[str, Any], pk: int | None) -> models.Model:
        return services.relay_save(views.actor(request), data["network"], data["comment"], pk=pk)

    def delete(self, request: Request, pk: int) -> None:
        services.relay_delete(views.actor(request), pk)


class _Users(_Table):
    model = SmtpUser
    serializer = SmtpUserSerializer
    natural_key = "username"

    def save(self, request: Request, data: dict[str, Any], pk: int | None) -> models.Model:
        password = data.get("password") or None
        return services.user_save(views.actor(request), data["username"], password, data["is_active"], pk=pk)

    def delete(self, request: Request, pk: int) -> None:
        services.user_delete(views.actor(request), pk)


@extend_schema(request=RatSerializer, responses=RatSerializer)
@extend_schema_view(
    get=extend_schema(responses=RatSerializer(many=True)), post=extend_schema(responses={201: RatSerializer})
)
class RatList(_List):
    table = _Rats()
    serializer_class = RatSerializer


class RatDetail(_Detail):
    table = _Rats()
    serializer_class = RatSerializer


@extend_schema(request=RelaySerializer, responses=RelaySerializer)
@extend_schema_view(
    get=extend_schema(responses=RelaySerializer(many=True)), post=extend_schema(responses={201: RelaySerializer})
)
class RelayList(_List):
    table = _Relays()
    serializer_class = RelaySerializer


class RelayDetail(_Detail):
    table = _Relays()
    serializer_class = RelaySerializer


@extend_schema(request=SmtpUserSerializer, responses=SmtpUserSerializer)
@extend_schema_view(
    get=extend_schema(responses=SmtpUserSerializer(many=True)), post=extend_schema(responses={201: SmtpUserSerializer})
)
class UserList(_List):
    table = _Users()
    serializer_class = SmtpUserSerializer


class UserDetail(_Detail):
    table = _Users()
    serializer_class = SmtpUserSerializer
