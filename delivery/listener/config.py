"""The listener's configuration: `Config`, read from the `ESAROUTES_SMTP_*` settings by `config_from_settings`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from django.conf import settings


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 2525
    hostname: str = "localhost"
    interface: str = "Data 1"
    max_message_size: int = 10 * 1024 * 1024
    max_recipients: int = 1000
    max_connections: int = 300
    max_connections_per_client: int = 50
    command_timeout: float = 300.0
    data_timeout: float = 300.0
    max_errors: int = 20
    auth_without_tls: bool = False
    reverse_dns: bool = False
    reverse_dns_timeout: float = 2.0
    tls_cert: str = ""
    tls_key: str = ""
    db_threads: int = 8
    access_refresh: float = 1.0
    shutdown_grace: float = 5.0
    connections_key: str = "esaroutes:smtp:connections"  # where the counts are in Redis (connlimits)


def config_from_settings(**overrides: Any) -> Config:
    """The listener's configuration from the `ESAROUTES_SMTP_*` settings, with overrides (tests, bench)."""
    host, port = settings.ESAROUTES_SMTP_LISTEN
    base = Config(
        host=host,
        port=port,
        hostname=settings.ESAROUTES_HOSTNAME,
        interface=settings.ESAROUTES_SMTP_INTERFACE,
        max_message_size=settings.ESAROUTES_SMTP_MAX_MESSAGE_SIZE,
        max_recipients=settings.ESAROUTES_SMTP_MAX_RECIPIENTS,
        max_connections=settings.ESAROUTES_SMTP_MAX_CONNECTIONS,
        max_connections_per_client=settings.ESAROUTES_SMTP_MAX_CONNECTIONS_PER_CLIENT,
        command_timeout=settings.ESAROUTES_SMTP_COMMAND_TIMEOUT,
        data_timeout=settings.ESAROUTES_SMTP_DATA_TIMEOUT,
        max_errors=settings.ESAROUTES_SMTP_MAX_ERRORS,
        auth_without_tls=settings.ESAROUTES_SMTP_AUTH_WITHOUT_TLS,
        reverse_dns=settings.ESAROUTES_SMTP_REVERSE_DNS,
        tls_cert=settings.ESAROUTES_SMTP_TLS_CERT,
        tls_key=settings.ESAROUTES_SMTP_TLS_KEY,
        db_threads=settings.ESAROUTES_SMTP_DB_THREADS,
        access_refresh=settings.ESAROUTES_SMTP_ACCESS_REFRESH,
        # The installation is what shares the database: its name keeps two test databases on one Redis apart.
        connections_key=f"esaroutes:smtp:connections:{settings.DATABASES['default']['NAME']}",
    )
    return replace(base, **overrides)
