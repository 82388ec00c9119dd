"""`manage.py smtpd`: the inbound SMTP listener on ESAROUTES_SMTP_LISTEN, until SIGTERM or SIGINT.

On a signal it stops accepting, lets sessions in progress finish for a few seconds (`--grace`), then closes the
rest with `421` (a client retries anything it has not had a `250` for) and exits.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from delivery import listener


class Command(BaseCommand):
    help = "Run the inbound SMTP listener (ESAROUTES_SMTP_LISTEN)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--listen", help="HOST:PORT or [IPv6]:PORT instead of ESAROUTES_SMTP_LISTEN")
        parser.add_argument("--grace", type=float, default=5.0, help="seconds for sessions to finish on stop")

    def handle(self, *args: Any, **options: Any) -> None:
        # The event loop thread gives up the GIL at every socket call; with the default 5 ms switch interval it
        # then waits behind the database threads' Python work (the convoy effect). 0.5 ms keeps it responsive.
        sys.setswitchinterval(float(os.environ.get("ESAROUTES_SMTP_SWITCH_INTERVAL", "0.0005")))
        overrides: dict[str, Any] = {"shutdown_grace": options["grace"]}
        if options["listen"]:
            from esaroutes.env import parse_listen

            overrides["host"], overrides["port"] = parse_listen(options["listen"])
        config = listener.config_from_settings(**overrides)
        asyncio.run(self._run(config))

    async def _run(self, config: listener.Config) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def ready(running: listener.Listener) -> None:
            host, port = running.address
            self.stdout.write(f"SMTP listener on {host} port {port}", ending="\n")
            self.stdout.flush()

        await listener.serve(config, stop, ready=ready)
        self.stdout.write("SMTP listener stopped")
