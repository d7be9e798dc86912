"""The wire contract of Alur: event models, subject names and the domain vocabulary."""

from contracts.envelope import CloudEvent, derived_id, event_type
from contracts import subjects, vocab

__all__ = ["CloudEvent", "derived_id", "event_type", "subjects", "vocab"]
