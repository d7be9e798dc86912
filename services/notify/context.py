"""What every part of notify shares: the service app, the escalation policy, the clock and the registry."""

from __future__ import annotations

from datetime import UTC, datetime

from nats.js import JetStreamContext

from domain.escalation_policy import EscalationPolicy
from domain.registry import AgencyRegistry
from runtime.app import ServiceApp

AUDIT_EVERY_HOURS = 60 / 3600
"""The auditor looks for lost timers and facts every minute (times the SLA scale, at least every 0.5 s)."""


class NotifyContext:
    """The notify service's shared parts: built once by `create_app`, handed to each of its pieces."""

    def __init__(self, app: ServiceApp, policy: EscalationPolicy) -> None:
        self.app = app
        self.policy = policy
        self.log = app.log
        self.scale = app.settings.sla_scale
        self.audit_every = max(0.5, AUDIT_EVERY_HOURS * 3600 * self.scale)

    @property
    def js(self) -> JetStreamContext:
        return self.app.js

    def registry(self) -> AgencyRegistry:
        """The agency registry as it stands now (it is reloaded while the service runs)."""
        assert self.app.registry_store is not None
        return self.app.registry_store.current

    def secretariat_ids(self) -> list[str]:
        """Where raises go: the task-force secretariat, when the registry has one."""
        secretariat = self.registry().secretariat()
        return [secretariat.id] if secretariat else []

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)
