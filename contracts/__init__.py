"""The wire contract of Alur: event models, subject names and the domain vocabulary."""

from contracts import subjects, vocab
from contracts.envelope import CloudEvent, derived_id, event_type

__all__ = ["CloudEvent", "derived_id", "event_type", "subjects", "vocab"]
