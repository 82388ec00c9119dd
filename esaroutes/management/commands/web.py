"""Serve the web UI with gunicorn on ESAROUTES_WEB_LISTEN (static files by WhiteNoise)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from esaroutes import env


class Command(BaseCommand):
    help = "Run the web UI under gunicorn on ESAROUTES_WEB_LISTEN."

    def handle(self, *args: Any, **options: Any) -> None:
        host, port = settings.ESAROUTES_WEB_LISTEN
        bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        workers = env.env_int("ESAROUTES_WEB_WORKERS", 2, minimum=1, maximum=64)
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        argv = [
            gunicorn,
            "esaroutes.wsgi:application",
            "--bind",
            bind,
            "--workers",
            str(workers),
            "--worker-class",
            "gthread",
            "--threads",
            "8",
            "--access-logfile",
            "-",
            "--graceful-timeout",
            "10",
            "--no-control-socket",
        ]
        sys.stdout.flush()
        os.execv(gunicorn, argv)
