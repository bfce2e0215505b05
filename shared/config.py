"""Settings, one pydantic-settings class per concern, read from the environment only.

Nothing is built at import: call get_settings() (cached) or construct a Settings in tests.
With no DATABASE_URL the embedded default applies: SQLite under ./axiom-data/.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
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
    """The spanning SCP this instance runs (services.listener; also used to refuse sources that point back at it).

    `ae_title` is the listener's own storage AE title: sources send there what the spanner retrieves from them with
    C-MOVE (PROXY strategy). Queries are answered on each spanner config's `scp_ae_title`.
    """

    model_config = SettingsConfigDict(extra="ignore")

    ae_title: str = Field(default="AXIOM_SPANNER", alias="AXIOM_SCP_AE_TITLE")
    host: str = Field(default="0.0.0.0", alias="AXIOM_SCP_HOST")
    port: int = Field(default=11114, alias="AXIOM_SCP_PORT")
    calling_ae_title: str = Field(default="AXIOM", alias="AXIOM_CALLING_AE_TITLE")
    listener_type: str = Field(default="spanning-scp", alias="AXIOM_LISTENER_TYPE")
    max_associations: int = Field(default=64, ge=1, le=1024, alias="AXIOM_SCP_MAX_ASSOCIATIONS")
    spool_dir: Path | None = Field(default=None, alias="AXIOM_SPOOL_DIR")
    spool_max_mb: float = Field(default=512.0, gt=0, alias="AXIOM_SPOOL_MAX_MB")


class DistributedSettings(BaseSettings):
    """The distributed mode's infrastructure: RabbitMQ (Celery broker), Redis (live results, cache, source health)."""

    model_config = SettingsConfigDict(extra="ignore")

    rabbitmq_url: str | None = Field(default=None, alias="RABBITMQ_URL")
    # RabbitMQ's management HTTP API, where `axiom broker setup` applies the queue policies
    # (shared.messaging.broker_policy); unset: http://<RABBITMQ_URL's host>:15672.
    rabbitmq_management_url: str | None = Field(default=None, alias="AXIOM_RABBITMQ_MANAGEMENT_URL")
    redis_url: str | None = Field(default=None, alias="REDIS_URL")
    redis_prefix: str = Field(default="axiom:", alias="AXIOM_REDIS_PREFIX")
    worker_type: str = Field(default="all", alias="WORKER_TYPE")
    worker_concurrency: int = Field(default=8, ge=1, le=512, alias="WORKER_CONCURRENCY")
    live_ttl_seconds: float = Field(default=3600.0, gt=0, alias="AXIOM_LIVE_RESULT_TTL_SECONDS")
    result_retention_days: float = Field(default=7.0, gt=0, alias="AXIOM_RESULT_RETENTION_DAYS")

    @field_validator("rabbitmq_management_url", mode="before")
    @classmethod
    def _empty_url_is_unset(cls, value: object) -> object:
        """An empty AXIOM_RABBITMQ_MANAGEMENT_URL means unset (the default derived from RABBITMQ_URL)."""
        return None if isinstance(value, str) and not value.strip() else value

    def require(self) -> None:
        """ValueError naming the missing variables when the distributed mode cannot run."""
        missing = [name for name, value in (("RABBITMQ_URL", self.rabbitmq_url), ("REDIS_URL", self.redis_url))
                   if not value]
        if missing:
            raise ValueError(f"the distributed mode needs {' and '.join(missing)} (e.g. "
                             "RABBITMQ_URL=amqp://guest:guest@rabbitmq:5672// REDIS_URL=redis://redis:6379/0)")


class CoordinatorSettings(BaseSettings):
    """The spanner coordinator HTTP service."""

    model_config = SettingsConfigDict(extra="ignore")

    host: str = Field(default="0.0.0.0", alias="AXIOM_COORDINATOR_HOST")
    port: int = Field(default=8000, alias="AXIOM_COORDINATOR_PORT")
    secret_key: SecretStr | None = Field(default=None, alias="SECRET_KEY")
    max_wait_seconds: float = Field(default=60.0, gt=0, alias="AXIOM_MAX_WAIT_SECONDS")


class ApiSettings(BaseSettings):
    """The main API (services.api): where it listens, its token lifetime and the browser origins it serves.

    SECRET_KEY signs access tokens: with DATABASE_URL set it must be 32+ characters (the app refuses to start
    otherwise); in the embedded mode without it a random per-process key is used (tokens do not survive a restart).
    """

    model_config = SettingsConfigDict(extra="ignore")

    host: str = Field(default="0.0.0.0", alias="AXIOM_API_HOST")
    port: int = Field(default=80, ge=1, le=65535, alias="AXIOM_API_PORT")
    secret_key: SecretStr | None = Field(default=None, alias="SECRET_KEY")
    cors_origins: str = Field(default="", alias="AXIOM_CORS_ORIGINS")
    token_ttl_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600, alias="AXIOM_TOKEN_TTL_SECONDS")
    # The API's own storage AE (services.api.store_scp): the C-MOVE destination when WADO-RS fetches from a DIMSE
    # source without C-GET. Off (no port): such sources are skipped as holders, with a logged reason.
    store_ae_title: str = Field(default="AXIOM_API", min_length=1, max_length=16, pattern=r"^[\x21-\x5b\x5d-\x7e]"
                                r"[\x20-\x5b\x5d-\x7e]*$", alias="AXIOM_API_STORE_AE_TITLE")
    store_port: int | None = Field(default=None, ge=0, le=65535, alias="AXIOM_API_STORE_PORT")
    move_job_workers: int = Field(default=2, ge=1, le=64, alias="AXIOM_MOVE_JOB_WORKERS")  # concurrent C-MOVE jobs
    # Google ID-token login (POST /api/v1/auth/google, shared.security.google_id): off while the client id is unset.
    google_client_id: str | None = Field(default=None, alias="AXIOM_GOOGLE_CLIENT_ID")
    google_certs_url: str = Field(default="https://www.googleapis.com/oauth2/v3/certs", pattern=r"^https?://\S+$",
                                  alias="AXIOM_GOOGLE_CERTS_URL")
    google_hosted_domain: str | None = Field(default=None, alias="AXIOM_GOOGLE_HOSTED_DOMAIN")

    @property
    def cors_origin_list(self) -> list[str]:
        """AXIOM_CORS_ORIGINS as a list: comma-separated origins (`https://viewer.example.org`), blanks dropped."""
        return [origin.strip().rstrip("/") for origin in self.cors_origins.split(",") if origin.strip()]


class LoggingSettings(BaseSettings):
    """Log shipping (shared.logging): with FLUENTD_HOST set, every JSON log record also goes to Fluentd's forward
    input at FLUENTD_PORT, through a queue of FLUENTD_QUEUE_SIZE records (full: records are dropped, never waited on)."""

    model_config = SettingsConfigDict(extra="ignore")

    fluentd_host: str | None = Field(default=None, alias="FLUENTD_HOST")
    fluentd_port: int = Field(default=24224, ge=1, le=65535, alias="FLUENTD_PORT")
    fluentd_queue_size: int = Field(default=10_000, ge=1, le=1_000_000, alias="FLUENTD_QUEUE_SIZE")


class MetricsSettings(BaseSettings):
    """/metrics (shared.metrics) on the API and the coordinator: a Prometheus scraper sends AXIOM_METRICS_TOKEN as
    `Authorization: Bearer <token>`; unset, /metrics takes the same credentials as any other route."""

    model_config = SettingsConfigDict(extra="ignore")

    token: SecretStr | None = Field(default=None, min_length=16, alias="AXIOM_METRICS_TOKEN")

    @field_validator("token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """An empty AXIOM_METRICS_TOKEN (compose passes `${AXIOM_METRICS_TOKEN:-}`) means unset."""
        return None if isinstance(value, str) and not value.strip() else value


class GoogleCloudSettings(BaseSettings):
    """Google Cloud Healthcare sources (kind `google_healthcare`, shared.adapters.google_auth): the API root their
    DICOMweb URLs are built under (a Private Service Connect endpoint, a proxy, a test server) and the credentials
    file of Application Default Credentials; unset, ADC looks further (gcloud user credentials, the metadata server).
    Nothing here is read or probed until a google_healthcare source is queried."""

    model_config = SettingsConfigDict(extra="ignore")

    healthcare_url: str = Field(default="https://healthcare.googleapis.com/v1", pattern=r"^https?://\S+$",
                                alias="AXIOM_GOOGLE_HEALTHCARE_URL")
    credentials_file: Path | None = Field(default=None, alias="GOOGLE_APPLICATION_CREDENTIALS")

    @field_validator("healthcare_url", mode="before")
    @classmethod
    def _empty_url_is_default(cls, value: object) -> object:
        """An empty AXIOM_GOOGLE_HEALTHCARE_URL (compose may pass one) is Google's; no slash at the end."""
        if isinstance(value, str):
            return value.strip().rstrip("/") or "https://healthcare.googleapis.com/v1"
        return value

    @field_validator("credentials_file", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        """An empty GOOGLE_APPLICATION_CREDENTIALS (compose passes `${GOOGLE_APPLICATION_CREDENTIALS:-}`) is unset."""
        return None if isinstance(value, str) and not value.strip() else value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    db: DatabaseSettings = Field(default_factory=DatabaseSettings)
    scp: ScpSettings = Field(default_factory=ScpSettings)
    distributed: DistributedSettings = Field(default_factory=DistributedSettings)
    coordinator: CoordinatorSettings = Field(default_factory=CoordinatorSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    logs: LoggingSettings = Field(default_factory=LoggingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    google: GoogleCloudSettings = Field(default_factory=GoogleCloudSettings)
    log_level: str = Field(default="INFO", alias="LOG_LEVEL")
    instance_id: str = Field(default="axiom-1", alias="AXIOM_INSTANCE_ID")
    heartbeat_seconds: float = Field(default=5.0, gt=0, le=3600, alias="AXIOM_HEARTBEAT_SECONDS")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()
