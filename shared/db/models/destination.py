"""`dicom_destinations`: the C-MOVE destinations the spanning SCP knows, by AE title.

A C-MOVE request names its Move Destination only by AE title (PS3.4 C.4.2.1.4.1); this table resolves that title to
the host and port to send C-STORE sub-operations to. Titles are stored stripped (leading and trailing spaces are
not significant, PS3.5 6.2) and compared exactly.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column, validates

from shared.connections import check_ae_title
from shared.db.base import Base, UtcDateTime, utc_now

MIN_PORT, MAX_PORT = 1, 65535


class DicomDestination(Base):
    """One Move Destination: AE title (unique), host and port; disabled destinations are not resolved."""

    __tablename__ = "dicom_destinations"
    __table_args__ = (CheckConstraint(f"port >= {MIN_PORT} AND port <= {MAX_PORT}", name="port_range"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(Text)
    is_enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        UtcDateTime, default=utc_now, onupdate=utc_now, server_default=func.now())

    @validates("ae_title")
    def _validate_ae_title(self, _key: str, value: str) -> str:
        return check_ae_title(value)

    @validates("host")
    def _validate_host(self, _key: str, value: str) -> str:
        if not value or not value.strip():
            raise ValueError("host must not be empty")
        return value.strip()

    @validates("port")
    def _validate_port(self, _key: str, value: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not MIN_PORT <= value <= MAX_PORT:
            raise ValueError(f"port must be an integer from {MIN_PORT} to {MAX_PORT}, not {value!r}")
        return value

    def __repr__(self) -> str:
        return f"DicomDestination(id={self.id!r}, ae_title={self.ae_title!r}, host={self.host!r}, port={self.port!r})"
