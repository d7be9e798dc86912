"""The CloudEvents 1.0 envelope (structured JSON mode) that carries every Alur event."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

DataT = TypeVar("DataT")

EVENT_ID_NAMESPACE = uuid.UUID("6f0a2c1e-7d1f-4c59-9a53-0b8d4c2c1e00")


def event_type(noun: str, verb: str) -> str:
    """`alur.<noun>.<verb>.v1`, the CloudEvents `type` of every Alur event."""
    return f"alur.{noun}.{verb}.v1"


def derived_id(*parts: str) -> str:
    """A stable UUID from business keys, so a replay yields the same id (and JetStream drops it)."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, "\x1f".join(parts)))


_PARAMETRIZED: dict[tuple[type, Any], Any] = {}


class CloudEvent(BaseModel, Generic[DataT]):
    """A CloudEvents 1.0 event in structured JSON mode; `data` is the typed payload."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1, max_length=128)
    source: str = Field(min_length=1, max_length=256)
    type: str = Field(min_length=1, max_length=128, pattern=r"^[a-z0-9_.]+$")
    time: AwareDatetime
    subject: str | None = Field(default=None, max_length=128)
    datacontenttype: Literal["application/json"] = "application/json"
    data: DataT

    def __class_getitem__(cls, params: Any) -> Any:  # type: ignore[override]
        """`CloudEvent[X]`, made once: pydantic keeps parametrized models only weakly, so without a reference
        of our own each `CloudEvent[X]` in a handler built the model (its whole schema) anew."""
        key = (cls, params)
        if (model := _PARAMETRIZED.get(key)) is None:
            model = _PARAMETRIZED[key] = super().__class_getitem__(params)  # type: ignore[misc]
        return model

    @classmethod
    def build(
        cls,
        *,
        type: str,
        source: str,
        subject: str | None,
        data: DataT,
        id: str | None = None,
        time: datetime | None = None,
    ) -> CloudEvent[DataT]:
        """A new event; pass a derived `id` whenever a replay must produce the same event."""
        return cls(
            id=id or str(uuid.uuid4()),
            source=source,
            type=type,
            time=time or datetime.now(UTC),
            subject=subject,
            data=data,
        )

    def to_bytes(self) -> bytes:
        """The wire form: compact JSON, without unset optional fields of `data`."""
        return self.model_dump_json(exclude_none=True).encode()

