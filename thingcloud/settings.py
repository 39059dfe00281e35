"""One Settings object for the whole server, read from ``THINGCLOUD_*`` environment variables.

The CLI overrides a few of them from flags; tests build their own ``Settings`` and hand it to
``create_app``. Defaults give a working single-process cloud on an embedded SQLite file under ./var.
"""

from __future__ import annotations

import contextlib
import os
import re
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
    """Set: the bus runs over NATS (thingcloud/natsbus.py) so that several nodes act as one."""
    nats_subject_prefix: str = "thingcloud"
    """Put before every bus subject on NATS, so that several clouds can share one NATS server."""
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

    # Messages.
    max_message_bytes: int = 10 * 1024
    future_grace_seconds: int = 60
    """How far in the future a message ``ts`` may be (ARTIK's FUTURE_GRACE_PERIOD)."""
    ingest_writers: int = 4
    """Group commits in flight at once on PostgreSQL (SQLite always has one writer)."""
    http_offline_after: int = 600
    """Seconds of silence after which a device that is not connected (HTTP only) shows offline."""
    message_retention_days: int = 0
    """Messages and actions older than this are purged (0: kept forever); devices may override."""
    dedup_window_seconds: int = 24 * 3600
    """How long a re-sent message (same device, client ts and data) maps to its original mid."""

    # Background jobs (thingcloud/jobs) and the durable feed (thingcloud/feed.py); times in seconds.
    job_poll_interval: float = 1.0
    """How often an idle runner looks for due jobs (an enqueue on this node wakes it at once)."""
    job_lease_seconds: int = 60
    """A claimed job is renewed by heartbeat every third of this; a crashed node's jobs are retried
    once it has passed."""
    job_max_attempts: int = 5
    job_concurrency: int = 4
    job_retry_base_seconds: float = 10.0
    """Backoff before retry n is base * 2**(n-1), with ±50 % jitter, capped at one hour."""
    job_retention: int = 7 * 86400
    """Finished (succeeded or dead) jobs are deleted after this long."""
    feed_poll_interval: float = 1.0
    """Fallback poll of feed consumers when no ``feed.appended`` notification arrives."""
    feed_lease_seconds: int = 30
    feed_checkpoint_interval: float = 1.0
    """A consumer writes its checkpoint at most this often (and when it stops); a crash hands at most
    this much of the feed over again, which consumers must handle idempotently anyway."""
    feed_coalesce_seconds: float = 0.01
    """After a batch that was not full, a consumer waits this long before reading again, so that under
    load it reads a few large batches rather than one per commit."""
    feed_tail_entries: int = 20_000
    """The newest feed entries each node keeps decoded in memory for its consumers, which then share
    one read of the feed (thingcloud/feed_tail.py); 0 makes every consumer read the database itself."""
    feed_retention: int = 7 * 86400
    """Feed entries older than this and already past every consumer's checkpoint are trimmed."""

    # Message exports and imports (thingcloud/areas/exports).
    export_dir: Path | None = None
    """Where export archives (and uploaded import files) are kept; unset: ``<data_dir>/exports``."""
    export_ttl: int = 86400
    """Seconds an export archive stays downloadable after it is made; then it is Expired and removed."""
    export_niceness: int = Field(default=19, ge=0, le=19)
    """CPU priority of the export worker process (``nice``): 19 gives it only what live traffic leaves."""
    import_max_bytes: int = 100 * 1024 * 1024
    """Largest file ``POST /messages/import`` accepts."""
    smtp_url: str = ""
    """``smtp://[user:password@]host[:port]`` (``smtps://`` for TLS): export e-mails are sent through
    it; unset, they are logged instead."""
    mail_from: str = "thingcloud@localhost"

    # Subscriptions and notifications (thingcloud/areas/subscriptions); times in seconds.
    allow_insecure_callbacks: bool = False
    """Allow ``http://`` callback URLs on loopback (local development and tests); never in production."""
    notification_batch_seconds: float = 30.0
    """Later message notifications of a subscription are batched over this window."""
    notification_timeout: float = 10.0
    """Total time allowed for one callback POST (connect, send, answer)."""
    notification_max_body: int = 64 * 1024
    """A callback's answer is read up to this many bytes, the rest is ignored."""
    notification_concurrency: int = Field(default=32, ge=1)
    """Webhook deliveries a node runs at once, in slots of their own (not ``job_concurrency``'s): a
    delivery mostly waits on the callback, and one slot per slow callback must not stall the rest."""
    notification_max_failures: int = 10
    """Consecutive failed deliveries after which a subscription is SUSPENDED."""
    subscription_validation_ttl: int = 24 * 3600
    """Subscriptions not validated within this long are deleted."""
    kinesis_sink: str = ""
    """``module:factory`` building the Kinesis sink (``factory(rt)``); empty: awsKinesis refused."""

    # Device-management tasks (thingcloud/areas/devicemgmt/tasks.py, task_delivery.py); seconds.
    dm_task_answer_timeout: float = 60.0
    """A device that got a task and has not answered within this long (doubled at each attempt) gets
    it again; after ``dm_task_max_attempts`` sends it is FAILED (``NO_ANSWER``)."""
    dm_task_max_attempts: int = 3
    dm_task_sweep_interval: float = 10.0
    """How often unanswered and cancel-requested device tasks are looked at."""
    dm_update_max_bytes: int = 64 * 1024 * 1024
    """Largest firmware image the OTA upload endpoint accepts (stored under ``<data_dir>/firmware``)."""

    # WebSocket channels (thingcloud/channels); times in seconds.
    websocket_register_timeout: float = 30.0
    """A /websocket client must register a device within this long after connecting."""
    channel_ping_interval: float = 30.0
    """``{"type":"ping"}`` on every channel this often."""
    channel_send_queue: int = 1000
    """Frames waiting for one client; a client that lets it fill is disconnected (slow consumer)."""
    websocket_compression: bool = False
    """Offer permessage-deflate. Off by default: its zlib state costs ~33 KB per open socket, more
    than the rest of an idle connection (bench/live.py memory); on saves bandwidth on JSON frames."""

    # MQTT 3.1.1 endpoint for devices (thingcloud/channels/mqtt), on ``host``.
    mqtt_enabled: bool = True
    mqtt_port: int = 1883
    mqtt_tls_port: int = 8883
    """Served only when both ``mqtt_tls_cert`` and ``mqtt_tls_key`` are set."""
    mqtt_tls_cert: str = ""
    mqtt_tls_key: str = ""
    mqtt_max_message_bytes: int = 1024
    """Largest PUBLISH payload stored; larger ones get 413 on the errors topic (ARTIK's 1 KB)."""

    # Rules engine (thingcloud/areas/rules).
    rules_engine: bool = True
    """Whether this node may run the rules engine's feed consumer (one node at a time runs it, by
    lease); rule timers and schedules are jobs and run on any node."""
    rule_max_firings_per_minute: int = 60
    """Firings of one rule allowed in any minute; more are recorded as ``limited`` (stops loops)."""
    rule_timer_max_lateness: int = 3600
    """A duration timer running later than this many seconds (the server was down) is recorded as
    missed instead of firing."""
    rule_trace_entries: int = 50
    """Recent evaluations kept per rule for ``GET /rules/{ruleId}/trace``."""

    log_level: str = "INFO"
    log_json: bool = True
    access_log_data: bool = False
    """Also access-log the successful answers of ``POST /messages`` and ``POST /actions`` (every other
    request, and their errors, always are): off by default, since at device rates one line per
    message costs about a tenth of the ingest throughput; /metrics counts and times them anyway."""

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("nats_subject_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        # Dot-separated tokens without NATS wildcards or spaces: it is put in front of subjects.
        if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", value):
            raise ValueError("dot-separated tokens of letters, digits, '_' and '-'")
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
        if not path.exists():
            # Several processes may start at once on a fresh data directory (``migrate`` on each
            # node): the key is written whole to a private file, then linked into place, which only
            # the first one manages; every process then reads that one key.
            self.data_dir.mkdir(parents=True, exist_ok=True)
            draft = path.with_name(f".secret_key.{os.getpid()}")
            draft.unlink(missing_ok=True)
            draft.touch(mode=0o600)
            draft.write_text(secrets.token_urlsafe(48))
            with contextlib.suppress(FileExistsError):
                os.link(draft, path)
            draft.unlink()
        return path.read_text().strip()
