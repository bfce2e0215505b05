"""Settings, one pydantic-settings class per concern, read from the environment only.

Nothing is built at import: call get_settings() (cached) or construct a Settings in tests.
With no DATABASE_URL the embedded default applies: SQLite under ./axiom-data/.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DatabaseSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    data_dir: Path = Field(default=Path("axiom-data"), alias="AXIOM_DATA_DIR")

    @property
    def url(self) -> str:
        """DATABASE_URL, or the embedded SQLite file under AXIOM_DATA_DIR."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'axiom.db').resolve()}"

    @property
    def embedded(self) -> bool:
        return not self.database_url


class ScpSettings(BaseSettings):
    """The spanning SCP this instance runs (used to refuse sources that point back at it)."""

    model_config = SettingsConfigDict(extra="ignore")

    ae_title: str = Field(default="AXIOM_SPANNER", alias="AXIOM_SCP_AE_TITLE")
    host: str = Field(default="0.0.0.0", alias="AXIOM_SCP_HOST")
    port: int = Field(default=11114, alias="AXIOM_SCP_PORT")
    calling_ae_title: str = Field(default="AXIOM", alias="AXIOM_CALLING_AE_TITLE")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    db: DatabaseSettings = Field(default_factory=DatabaseSettings)
    scp: ScpSettings = Field(default_factory=ScpSettings)
    log_level: str = Field(default="INFO", alias="LOG_LEVEL")
    instance_id: str = Field(default="axiom-1", alias="AXIOM_INSTANCE_ID")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()
