"""The notify service object and what every notify module shares: its policy, settings and clock."""

from __future__ import annotations

from datetime import UTC, datetime

from alur.profile import profile_dir
from alur.registry import AgencyRegistry
from alur.service import Service
from services.notify.policy import load_policy

service = Service(
    "notify", consumers=["notify-requests", "notify-responses", "notify-timers", "notify-deliveries"]
)
log = service.log
policy = load_policy(profile_dir() / "escalation.yaml", scale=service.settings.sla_scale)
AUDIT_EVERY = max(0.5, 60 * service.settings.sla_scale)


def registry() -> AgencyRegistry:
    """The agency registry as it stands now (it is reloaded while the service runs)."""
    assert service.registry_store is not None
    return service.registry_store.current


def now() -> datetime:
    return datetime.now(UTC)
