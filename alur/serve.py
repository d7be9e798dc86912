"""`alur serve NAME` / `python -m alur.serve NAME`: run one service alone, with its HTTP endpoints."""

from __future__ import annotations

import importlib
import sys

import uvicorn

from alur.embedded import port_is_free
from alur.settings import Settings

SERVICES = ("intake", "routing", "notify")


def serve(name: str) -> int:
    """Run service `name` until SIGINT/SIGTERM (uvicorn drives FastStream's lifespan)."""
    if name not in SERVICES:
        print(f"unknown service {name!r}; choose one of {', '.join(SERVICES)}", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    host, port = getattr(settings, f"{name}_http")
    if not port_is_free(host, port):
        print(f"{name}: {host}:{port} is already in use; set ALUR_{name.upper()}_HTTP to a free host:port",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"services.{name}.app")
    config = uvicorn.Config(module.app, host=host, port=port, log_config=None, lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1] if len(sys.argv) > 1 else ""))
