"""schemathesis against the served schema, as an administrator on the test database, with no worker running:
no 5xx, every response conforms to the schema (status, content type, body). The fuzzer invents hosts, so the run
is watched: any connection (or name lookup) esaroutes attempts off loopback fails the test."""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.handlers.wsgi import WSGIHandler
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import make_token

OFF_LOOPBACK: list[Any] = []


def _loopback(host: Any) -> bool:
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return str(host) == "localhost"


@pytest.fixture
def _watch_the_network(monkeypatch):
    """Fail on any connection off loopback; resolve only addresses and localhost (no lookup leaves the machine)."""
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            OFF_LOOPBACK.append(address)
            raise OSError("test guard: connection off loopback")
        return real_connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not _loopback(host):
            try:
                ipaddress.ip_address(str(host))
            except ValueError:
                raise socket.gaierror(socket.EAI_NONAME, "test guard: no lookups off the machine") from None
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def api_token(alice, settings) -> str:
    settings.ESAROUTES_API_RATE = "1000000/minute"
    return make_token(alice)


@pytest.fixture(autouse=True)
def _keep_the_test_connection():
    """As Django's test client does: requests must not close the test's database connection (and transaction)."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def served_schema() -> dict[str, Any]:
    """What /api/v1/schema/ serves (the same generator, at collection time: no request, no database)."""
    raw = SchemaGenerator().get_schema(request=None, public=True)
    served: dict[str, Any] = json.loads(OpenApiJsonRenderer().render(raw, renderer_context={}))
    return served


schema = schemathesis.openapi.from_dict(served_schema())
schema.app = WSGIHandler()


@pytest.mark.slow
@schema.parametrize()
@hypothesis_settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_the_api_answers_by_its_schema(case, api_token, _watch_the_network):
    OFF_LOOPBACK.clear()
    case.call_and_validate(
        headers={"Authorization": f"Bearer {api_token}", "If-Match": "*"},
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )
    assert OFF_LOOPBACK == []
