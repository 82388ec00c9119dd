"""`/api/v1/access/rat/`, `access/relay/`, `access/users/`: recipient access rules, relay networks and SMTP AUTH
users, through `routes.access.services` as the pages and the admin do (same checks, same audit). An SMTP user's
`password` is write-only: it is stored hashed and never read back. `access.view` reads, `access.change` writes.
"""

from __future__ import annotations

from typing import Any

from django.db import models, transaction
from rest_framework import serializers
from rest_framework.request import Request

from esaroutes.api import errors, views
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


class _Table(views.RowsView):
    read_capability = "access.view"
    write_capability = "access.change"
    natural_key = ""

    def store(self, request: Request, data: dict[str, Any], pk: int | None) -> models.Model:
        """Save a row through the service (pk None: a new one)."""
        raise NotImplementedError

    def drop(self, request: Request, pk: int) -> None:
        raise NotImplementedError


class _List(_Table, views.CollectionView):
    def create(self, request: Request, data: dict[str, Any]) -> models.Model:
        with transaction.atomic(), errors.refused(services.AccessInvalid, lambda exc: exc.errors):
            self._refuse_duplicate(data)
            return self.store(request, data, None)

    def _refuse_duplicate(self, data: dict[str, Any]) -> None:
        """A POST creates: the services' save by natural key would change the existing row instead."""
        key = self.natural_key
        if key == "username" and SmtpUser.objects.filter(username=data[key].strip()).exists():
            raise services.AccessInvalid({key: ["This user already exists: change that one."]})
        if key == "domain":
            stored = services.normalize_rat_domain(data[key])
            if RecipientAccessRule.objects.filter(domain=stored).exists():
                raise services.AccessInvalid({key: ["This domain already has a rule: change that one."]})


class _Detail(_Table, views.ObjectView):
    def change(self, request: Request, obj: models.Model, data: dict[str, Any], *, partial: bool) -> None:
        merged = {**self.represent(obj), **data} if partial else data
        with errors.refused(services.AccessInvalid, lambda exc: exc.errors):
            self.store(request, merged, obj.pk)

    def remove(self, request: Request, obj: models.Model) -> None:
        self.drop(request, obj.pk)


class _Rats(_Table):
    model = RecipientAccessRule
    serializer_class = RatSerializer
    natural_key = "domain"

    def store(self, request: Request, data: dict[str, Any], pk: int | None) -> models.Model:
        return services.rat_save(views.actor(request), data["domain"], data["action"], data["comment"], pk=pk)

    def drop(self, request: Request, pk: int) -> None:
        services.rat_delete(views.actor(request), pk)


class _Relays(_Table):
    model = RelayNetwork
    serializer_class = RelaySerializer

    def store(self, request: Request, data: dict[str, Any], pk: int | None) -> models.Model:
        return services.relay_save(views.actor(request), data["network"], data["comment"], pk=pk)

    def drop(self, request: Request, pk: int) -> None:
        services.relay_delete(views.actor(request), pk)


class _Users(_Table):
    model = SmtpUser
    serializer_class = SmtpUserSerializer
    natural_key = "username"

    def store(self, request: Request, data: dict[str, Any], pk: int | None) -> models.Model:
        password = data.get("password") or None
        return services.user_save(views.actor(request), data["username"], password, data["is_active"], pk=pk)

    def drop(self, request: Request, pk: int) -> None:
        services.user_delete(views.actor(request), pk)


class RatList(_Rats, _List):
    pass


class RatDetail(_Rats, _Detail):
    pass


class RelayList(_Relays, _List):
    pass


class RelayDetail(_Relays, _Detail):
    pass


class UserList(_Users, _List):
    pass


class UserDetail(_Users, _Detail):
    pass
