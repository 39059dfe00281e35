"""One Settings object for the whole server, read from ``THINGCLOUD_*`` environment variables.

The CLI overrides a few of them from flags; tests build their own ``Settings`` and hand it to
``create_app``. Defaults give a working single-process cloud on an embedded SQLite file under ./var.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="THINGCLOUD_", extra="ignore")

    data_dir: Path = Path("./var")
    database_url: str = ""
    """SQLAlchemy async URL; empty means ``sqlite+aiosqlite:///<data_dir>/thingcloud.db``."""
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    public_url: str = ""
    """Externally visible base URL for redirects and links; empty means http://<host>:<port>."""
    secret_key: str = ""
    """Shared by every node. Empty: generated once into ``<data_dir>/secret_key``."""

    host: str = "127.0.0.1"
    port: int = 8080

    nats_url: str = ""
    redis_url: str = ""

    # Tokens and OAuth2.
    user_token_ttl: int = 3600
    app_token_ttl: int = 3600
    refresh_token_ttl: int = 14 * 86400 + 3600
    """ARTIK lets a refresh token work up to 14 days after its access token expired."""
    authorization_code_ttl: int = 60
    device_code_ttl: int = 1800
    device_code_interval: int = 5
    web_session_ttl: int = 7 * 86400
    signup_enabled: bool = True

    # Sign-in throttling: failures allowed per account and per client address in the window.
    login_failures_per_account: int = 10
    login_failures_per_address: int = 50
    login_failure_window: int = 900
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Peers whose ``X-Forwarded-For`` is believed (comma-separated addresses)."""

    # Rate limits: "default", "artik" (ARTIK's own published values) or "off".
    rate_limits: Literal["default", "artik", "off"] = "default"

    # First start.
    admin_email: str = "admin@thingcloud.local"
    admin_password: str = ""
    """Empty: a random password is generated and printed once on the first start."""

    log_level: str = "INFO"
    log_json: bool = True

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("rate_limits", mode="before")
    @classmethod
    def _rate_limit_aliases(cls, value: object) -> object:
        if isinstance(value, str):
            lowered = value.strip().lower()
            return {"0": "off", "false": "off", "none": "off", "on": "default"}.get(lowered, lowered)
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'thingcloud.db').as_posix()}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def public_base(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    def resolved_secret_key(self) -> str:
        """The shared secret; generated into the data directory on the first start when unset."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        path.touch(mode=0o600)
        path.write_text(key)
        return key
