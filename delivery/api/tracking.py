"""Message tracking: `GET /api/v1/messages/` (the tracking page's search: the same form, filters and validation,
keyset by MID, newest first), `GET /api/v1/messages/{mid}/` (what the page shows of a message) and `.../raw`
(administrators)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from delivery.models import DeliveryAttempt, MailLogLine, Message, Recipient
from delivery.monitor import forms, selectors
from esaroutes.api import views


class _Recipient(serializers.ModelSerializer[Recipient]):
    class Meta:
        model = Recipient
        fields = ["id", "rid", "address", "domain", "state", "held", "attempts", "last_code", "last_response"]


class _Attempt(serializers.ModelSerializer[DeliveryAttempt]):
    class Meta:
        model = DeliveryAttempt
        fields = ["id", "recipient", "at", "host", "code", "outcome"]


class _Line(serializers.ModelSerializer[MailLogLine]):
    class Meta:
        model = MailLogLine
        fields = ["id", "at", "level", "text"]


class _RecipientState(serializers.ModelSerializer[Recipient]):
    class Meta:
        model = Recipient
        fields = ["id", "rid", "address", "domain", "state", "attempts", "last_code"]


class MessageRowSerializer(serializers.Serializer[Any]):
    """One row of the tracking page: the message and its recipients' states."""

    mid = serializers.IntegerField(source="message.pk")
    received_at = serializers.DateTimeField(source="message.received_at")
    sender = serializers.CharField(source="message.sender", help_text='Envelope sender; "" is <>')
    subject = serializers.CharField(source="message.subject")
    message_id = serializers.CharField(source="message.message_id")
    size = serializers.IntegerField(source="message.size")
    state = serializers.CharField(source="message.state")
    recipients = _RecipientState(many=True)


class MessageSearch(views.SearchView):
    """The tracking page's search (`delivery.monitor.forms.TrackingForm`): without a time filter, the last week
    (any time with `mid`); a bad filter is a 400 naming its field."""

    read_capability = "tracking.view"
    keyset_descending = True
    serializer_class = MessageRowSerializer
    filter_form = forms.TrackingForm

    def search(self, form: forms.TrackingForm) -> QuerySet[Message]:
        return selectors.tracking_queryset(**form.search_kwargs(timezone.now()))

    def shown(self, page: list[Message]) -> Any:
        return selectors.tracking_rows(page)


class MessageDetailSerializer(serializers.Serializer[Any]):
    mid = serializers.IntegerField(source="message.pk")
    sender = serializers.CharField(source="message.sender")
    received_at = serializers.DateTimeField(source="message.received_at")
    state = serializers.CharField(source="message.state")
    headers = serializers.ListField(child=serializers.ListField(child=serializers.CharField()))
    recipients = _Recipient(many=True)
    attempts = _Attempt(many=True)
    lines = _Line(many=True)
    lines_capped = serializers.BooleanField()


class MessageDetail(views.ApiView):
    read_capability = "tracking.view"

    @extend_schema(responses=MessageDetailSerializer)
    def get(self, request: Request, mid: int) -> Response:
        story = selectors.message_story(get_object_or_404(Message, pk=mid))
        return Response(MessageDetailSerializer(story).data)


class MessageRaw(views.ApiView):
    """The stored message as received, `message/rfc822`; administrators only, as the page's raw view."""

    read_capability = "message.raw"

    @extend_schema(responses={(200, "message/rfc822"): bytes})
    def get(self, request: Request, mid: int) -> HttpResponse:
        mid, data = selectors.raw_message(mid)
        response = HttpResponse(data, content_type="message/rfc822")
        response["Content-Disposition"] = f'attachment; filename="mid-{mid}.eml"'
        return response
