"""`alur serve NAME` / `python -m alur.serve NAME`: run one service alone, with its HTTP endpoints."""

from __future__ import annotations

import importlib
import sys
import threading
from types import FrameType

import uvicorn

from alur.children import ParentWatch
from alur.embedded import port_is_free
from runtime.locate import with_embedded_keys
from runtime.logs import json_line
from runtime.provision import load_topology
from runtime.settings import Settings, SettingsError

SERVICES = tuple(load_topology().services)
HTTP_GRACE = 10.0
"""Seconds a stopping service lets requests in flight finish before it cancels them: within `alur up`'s
stop grace, and what ends the board's open event streams (they never end by themselves)."""


class _Server(uvicorn.Server):
    """uvicorn's server, telling the service it is stopping the moment a signal arrives."""

    def __init__(self, config: uvicorn.Config, closing: threading.Event | None) -> None:
        super().__init__(config)
        self.closing = closing

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.closing is not None:
            self.closing.set()
        super().handle_exit(sig, frame)


def serve(name: str) -> int:
    """Run service `name` until SIGINT/SIGTERM (uvicorn drives FastStream's lifespan)."""
    if name not in SERVICES:
        print(f"unknown service {name!r}; choose one of {', '.join(SERVICES)}", file=sys.stderr)
        return 2
    ParentWatch.from_env().start()
    settings = with_embedded_keys(Settings.from_env())
    host, port = getattr(settings, f"{name}_http")
    if not port_is_free(host, port):
        print(json_line(name, f"{host}:{port} is already in use; set ALUR_{name.upper()}_HTTP to a free host:port"),
              file=sys.stderr)
        return 2
    create_app = importlib.import_module(f"services.{name}.app").create_app
    try:
        service = create_app(settings)
    except SettingsError as exc:  # e.g. intake without ALUR_CASE_KEY: a message, not a traceback
        print(json_line(name, str(exc)), file=sys.stderr)
        return 2
    config = uvicorn.Config(service, host=host, port=port, log_config=None, lifespan="on", access_log=False,
                            timeout_graceful_shutdown=HTTP_GRACE)
    server = _Server(config, getattr(service, "closing", None))
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1] if len(sys.argv) > 1 else ""))
