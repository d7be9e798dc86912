"""Shared runtime of the Alur services: broker, service wiring, logs, settings, registry, security, provisioning."""
