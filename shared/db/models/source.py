"""`sources`: the archives the spanner can query (DIMSE, DICOMweb, Google Healthcare)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Enum, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column, validates

from shared.connections import (
    SOURCE_KINDS,
    DicomwebConnection,
    DimseConnection,
    GoogleHealthcareConnection,
    parse_connection,
)
from shared.db.base import Base, JsonType, UtcDateTime, utc_now

SourceKindType = Enum(*SOURCE_KINDS, name="source_kind", native_enum=False, create_constraint=True, length=32)


class Source(Base):
    """One archive. `connection` is the typed connection model; the JSON column is validated on write and read."""

    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(SourceKindType)
    connection_data: Mapped[dict[str, Any]] = mapped_column("connection", JsonType)
    description: Mapped[str | None] = mapped_column(Text)
    is_enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        UtcDateTime, default=utc_now, onupdate=utc_now, server_default=func.now()
    )

    @validates("connection_data")
    def _validate_connection(self, _key: str, value: Any) -> dict[str, Any]:
        model = parse_connection(value.model_dump() if hasattr(value, "model_dump") else value)
        return model.model_dump(mode="json")

    @property
    def connection(self) -> DimseConnection | DicomwebConnection | GoogleHealthcareConnection:
        """The validated, typed connection config (pydantic.ValidationError if the stored JSON is bad)."""
        return parse_connection(self.connection_data)

    @connection.setter
    def connection(self, value: Any) -> None:
        """Set from a connection model or dict; `kind` follows the connection's kind."""
        self.connection_data = value
        self.kind = self.connection_data["kind"]

    def __repr__(self) -> str:
        return f"Source(id={self.id!r}, name={self.name!r}, kind={self.kind!r})"
