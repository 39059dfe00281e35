"""Every table of ThingCloud, on one SQLAlchemy ``MetaData``.

Times are epoch milliseconds (``BigInteger``), ids are 32-hex strings. Secrets a client must see again
(client secrets, device tokens) are stored Fernet-encrypted; bearer tokens, refresh tokens,
authorization codes and browser sessions only as SHA-256 digests. Alembic migrations under
``thingcloud/migrations`` are generated from this file.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID = String(34)

users = Table(
    "users",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("email", String(254), nullable=False, unique=True),
    Column("full_name", String(200), nullable=False, default=""),
    Column("password_hash", String(200), nullable=True),
    Column("sa_identity", String(100), nullable=True),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("created_on", BigInteger, nullable=False),
    Column("modified_on", BigInteger, nullable=False),
)

applications = Table(
    "applications",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", String(100), nullable=False),
    Column("owner_uid", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("secret_encrypted", Text, nullable=False),
    Column("redirect_uris", JSON, nullable=False),
    Column("password_grant", Boolean, nullable=False, default=False),
    Column("first_party", Boolean, nullable=False, default=False),
    Column("permissions", JSON, nullable=False),
    Column("oid", ID, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=True, index=True),
    Column("created_on", BigInteger, nullable=False),
    Column("modified_on", BigInteger, nullable=False),
)

# A user's consent: the user authorized the application with this scope.
grants = Table(
    "grants",
    metadata,
    Column("uid", ID, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("aid", ID, ForeignKey("applications.id", ondelete="CASCADE"), primary_key=True),
    Column("scope", String(100), nullable=False),
    Column("created_on", BigInteger, nullable=False),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", ID, primary_key=True),
    Column("kind", String(10), nullable=False),  # user | app | device
    Column("access_hash", String(64), nullable=False, unique=True),
    Column("refresh_hash", String(64), nullable=True, unique=True),
    Column("uid", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True),
    Column("aid", ID, ForeignKey("applications.id", ondelete="CASCADE"), nullable=True, index=True),
    Column("did", ID, nullable=True, index=True),
    Column("scope", String(100), nullable=False, default="read,write"),
    Column("expires_at", BigInteger, nullable=True),  # null: never (device tokens)
    Column("refresh_expires_at", BigInteger, nullable=True),
    Column("secret_encrypted", Text, nullable=True),  # device tokens are shown again
    Column("created_on", BigInteger, nullable=False),
)

authorization_codes = Table(
    "authorization_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("aid", ID, ForeignKey("applications.id", ondelete="CASCADE"), nullable=False),
    Column("uid", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("redirect_uri_given", Boolean, nullable=False, default=False),
    Column("scope", String(100), nullable=False),
    Column("code_challenge", String(128), nullable=True),
    Column("expires_at", BigInteger, nullable=False),
)

device_codes = Table(
    "device_codes",
    metadata,
    Column("device_code_hash", String(64), primary_key=True),
    Column("user_code", String(16), nullable=False, unique=True),
    Column("aid", ID, ForeignKey("applications.id", ondelete="CASCADE"), nullable=False),
    Column("scope", String(100), nullable=False),
    Column("uid", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
    Column("status", String(10), nullable=False),  # pending | approved | denied
    Column("expires_at", BigInteger, nullable=False),
    Column("last_poll_at", BigInteger, nullable=True),
)

web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("uid", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("created_on", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

user_properties = Table(
    "user_properties",
    metadata,
    Column("uid", ID, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("aid", ID, ForeignKey("applications.id", ondelete="CASCADE"), primary_key=True),
    Column("properties", Text, nullable=False),
    Column("created_on", BigInteger, nullable=False),
    Column("modified_on", BigInteger, nullable=False),
)

Index("ix_tokens_kind_did", tokens.c.kind, tokens.c.did)

# --- Registry: organizations, device types, manifests, devices, shares, status ---------------------

organizations = Table(
    "organizations",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", String(100), nullable=False),
    Column("description", String(1500), nullable=True),
    Column("created_by", ID, ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
    Column("created_on", BigInteger, nullable=False),
    Column("modified_on", BigInteger, nullable=False),
)

organization_members = Table(
    "organization_members",
    metadata,
    Column("oid", ID, ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True),
    Column("uid", ID, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True),
    Column("role", String(20), nullable=False),  # administrator | developer
    Column("created_on", BigInteger, nullable=False),
)

device_types = Table(
    "device_types",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("unique_name", String(200), nullable=False, unique=True),
    Column("name", String(100), nullable=False),
    Column("description", String(1500), nullable=True),
    Column("owner_uid", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True),
    Column("oid", ID, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=True, index=True),
    Column("published", Boolean, nullable=False, default=False),
    Column("protected", Boolean, nullable=False, default=False),
    Column("approved", Boolean, nullable=False, default=True),
    Column("has_cloud_connector", Boolean, nullable=False, default=False),
    Column("rsp", Boolean, nullable=False, default=False),
    Column("issuer_dn", String(500), nullable=True),
    Column("vid", String(64), nullable=True),
    Column("tags", JSON, nullable=False),
    Column("latest_version", BigInteger, nullable=False, default=0),
    Column("created_on", BigInteger, nullable=False),
    Column("last_updated", BigInteger, nullable=False),
)

manifests = Table(
    "manifests",
    metadata,
    Column("dtid", String(100), ForeignKey("device_types.id", ondelete="CASCADE"), primary_key=True),
    Column("version", BigInteger, primary_key=True),
    Column("document", JSON, nullable=False),
    Column("created_by", ID, nullable=True),
    Column("created_on", BigInteger, nullable=False),
)

devices = Table(
    "devices",
    metadata,
    Column("id", ID, primary_key=True),
    Column("uid", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("dtid", String(100), ForeignKey("device_types.id"), nullable=False, index=True),
    Column("name", String(36), nullable=False),
    Column("manifest_version", BigInteger, nullable=True),
    Column("manifest_version_policy", String(10), nullable=False, default="LATEST"),
    Column("need_provider_auth", Boolean, nullable=False, default=False),
    Column("cloud_authorization", String(20), nullable=False, default="NO_AUTHORIZATION"),
    Column("properties", JSON, nullable=True),
    Column("eid", String(200), nullable=True),
    Column("certificate_info", Text, nullable=True),
    Column("certificate_signature", Text, nullable=True),
    Column("created_on", BigInteger, nullable=False),
    Column("modified_on", BigInteger, nullable=False),
)

# Status and presence, one row per device: availability set by PUT or by the device channels,
# message/action times fed by ingest.
device_status = Table(
    "device_status",
    metadata,
    Column("did", ID, ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
    Column("availability", String(10), nullable=False, default="unknown"),
    Column("connected", Boolean, nullable=False, default=False),
    Column("last_message_ts", BigInteger, nullable=True),
    Column("last_action_ts", BigInteger, nullable=True),
    Column("last_time_online", BigInteger, nullable=True),
    Column("last_seen_on", BigInteger, nullable=True),
    Column("modified_on", BigInteger, nullable=False),
)

# Last value of each field of a device (by latest ts), maintained by ingest.
device_snapshots = Table(
    "device_snapshots",
    metadata,
    Column("did", ID, ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
    Column("path", String(500), primary_key=True),
    Column("value", JSON, nullable=True),
    Column("ts", BigInteger, nullable=False),
)

device_shares = Table(
    "device_shares",
    metadata,
    Column("id", ID, primary_key=True),
    Column("did", ID, ForeignKey("devices.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("owner_uid", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("email", String(254), nullable=False),
    Column("recipient_uid", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True),
    Column("status", String(10), nullable=False),  # PENDING | ACCEPTED | REJECTED
    Column("shared_on", BigInteger, nullable=False),
    Column("decided_on", BigInteger, nullable=True),
    UniqueConstraint("did", "email", name="uq_device_shares_did_email"),
)

Index("ix_device_shares_email", device_shares.c.email)

# --- Messages and actions ----------------------------------------------------------------------------
# No foreign keys on these hot tables: deleting a device removes its messages in the background.
# On PostgreSQL both are partitioned by month of ``ts`` (partitions are created on demand by the
# writer and dropped whole by retention). Consumers that must see every message read the feed.

messages = Table(
    "messages",
    metadata,
    Column("sdid", ID, primary_key=True),
    Column("ts", BigInteger, primary_key=True),
    Column("mid", String(32), primary_key=True),
    Column("sdtid", String(100), nullable=False),
    Column("uid", ID, nullable=False),
    Column("cts", BigInteger, nullable=False),
    Column("mv", BigInteger, nullable=False),
    Column("data", JSON, nullable=False),
    postgresql_partition_by="RANGE (ts)",
)
Index("ix_messages_mid", messages.c.mid)
Index("ix_messages_uid_ts", messages.c.uid, messages.c.ts)

actions = Table(
    "actions",
    metadata,
    Column("ddid", ID, primary_key=True),
    Column("ts", BigInteger, primary_key=True),
    Column("mid", String(32), primary_key=True),
    Column("ddtid", String(100), nullable=False),
    Column("sdid", ID, nullable=True),
    Column("uid", ID, nullable=False),
    Column("cts", BigInteger, nullable=False),
    Column("mv", BigInteger, nullable=False),
    Column("data", JSON, nullable=False),
    postgresql_partition_by="RANGE (ts)",
)
Index("ix_actions_mid", actions.c.mid)

# Re-sent messages (same device, same client ts, same data) within the dedup window map to the
# original mid. A unique key with ON CONFLICT DO NOTHING: one duplicate never fails a whole batch.
message_dedup = Table(
    "message_dedup",
    metadata,
    Column("sdid", ID, primary_key=True),
    Column("ts", BigInteger, primary_key=True),
    Column("digest", String(40), primary_key=True),
    Column("mid", String(32), nullable=False),
    Column("created_on", BigInteger, nullable=False, index=True),
)

# --- Durable feed and background jobs -----------------------------------------------------------------
# The feed is the transactional outbox of committed events (thingcloud/feed.py): ``seq`` order is
# commit order, consumers keep a checkpoint (and a lease, so one node runs each consumer). On SQLite
# ``sqlite_autoincrement`` forbids reusing a seq after the newest rows were trimmed, which would make
# new entries look older than every checkpoint.

feed = Table(
    "feed",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("kind", String(40), nullable=False),
    Column("ref", String(100), nullable=True),
    Column("did", ID, nullable=True),
    Column("payload", JSON, nullable=False),
    Column("created_on", BigInteger, nullable=False),
    sqlite_autoincrement=True,
)

feed_checkpoints = Table(
    "feed_checkpoints",
    metadata,
    Column("consumer", String(100), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("owner", String(100), nullable=True),
    Column("lease_until", BigInteger, nullable=False, default=0),
    Column("updated_on", BigInteger, nullable=False),
)

# Durable background work (thingcloud/jobs): claimed by lease, retried with backoff. ``unique_key``
# makes scheduling idempotent (NULLs do not collide on either database).
jobs = Table(
    "jobs",
    metadata,
    Column("id", ID, primary_key=True),
    Column("kind", String(100), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(10), nullable=False),  # queued | running | succeeded | failed | dead
    Column("run_at", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False),
    Column("last_error", Text, nullable=True),
    Column("lease_owner", String(100), nullable=True),
    Column("lease_until", BigInteger, nullable=True),
    Column("heartbeat_at", BigInteger, nullable=True),
    Column("unique_key", String(200), nullable=True, unique=True),
    Column("result", JSON, nullable=True),
    Column("created_on", BigInteger, nullable=False),
    Column("updated_on", BigInteger, nullable=False),
)
Index("ix_jobs_status_run_at", jobs.c.status, jobs.c.run_at)

# Per-device retention of messages and actions, overriding ``message_retention_days``.
device_retention = Table(
    "device_retention",
    metadata,
    Column("did", ID, ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
    Column("days", BigInteger, nullable=False),
    Column("modified_on", BigInteger, nullable=False),
)

# --- Subscriptions and notifications (thingcloud/areas/subscriptions) --------------------------------
# A subscription pushes an application's users' data to a callback URL (or a Kinesis stream). The
# confirmation nonce and the AWS secret are stored encrypted (they are sent again later).
subscriptions = Table(
    "subscriptions",
    metadata,
    Column("id", ID, primary_key=True),
    Column("aid", ID, nullable=False, index=True),
    Column("uid", ID, nullable=False, index=True),
    Column("message_type", String(10), nullable=False),  # message | action
    Column("subscription_type", String(20), nullable=False),  # httpCallback | awsKinesis
    Column("sdtid", String(100), nullable=True),
    Column("sdid", ID, nullable=True),
    Column("ddid", ID, nullable=True),
    Column("include_shared", Boolean, nullable=False, default=False),
    Column("description", String(256), nullable=True),
    Column("callback_url", Text, nullable=True),
    Column("aws_key", String(200), nullable=True),
    Column("aws_secret_encrypted", Text, nullable=True),
    Column("aws_region", String(50), nullable=True),
    Column("aws_stream", String(200), nullable=True),
    Column("status", String(30), nullable=False),  # PENDING_CALLBACK_VALIDATION | ACTIVE | SUSPENDED
    Column("nonce_encrypted", Text, nullable=True),
    Column("failures", Integer, nullable=False, default=0),  # consecutive failed deliveries
    Column("created_on", BigInteger, nullable=False),
    Column("modified_on", BigInteger, nullable=False),
)

# One notification = one callback POST: a single action, a subscription's first message, or the
# messages batched over ``notification_batch_seconds``. ``status``: open (still collecting) |
# sending (closed, delivery job running) | delivered | dropped (subscription suspended or deleted).
notifications = Table(
    "notifications",
    metadata,
    Column("id", ID, primary_key=True),
    Column("sid", ID, ForeignKey("subscriptions.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(10), nullable=False),  # message | action
    Column("status", String(10), nullable=False),
    Column("start_date", BigInteger, nullable=False),
    Column("end_date", BigInteger, nullable=False),
    Column("first_cts", BigInteger, nullable=False),  # commit-side time of its first item
    Column("due_on", BigInteger, nullable=False),
    Column("delivered_on", BigInteger, nullable=True),
    Column("created_on", BigInteger, nullable=False),
)
Index("ix_notifications_sid_status", notifications.c.sid, notifications.c.status)

# The messages (or actions) of a notification, by reference; (sid, mid) unique makes a re-handled
# feed batch idempotent.
notification_items = Table(
    "notification_items",
    metadata,
    Column("sid", ID, ForeignKey("subscriptions.id", ondelete="CASCADE"), primary_key=True),
    Column("mid", String(32), primary_key=True),
    Column("nid", ID, ForeignKey("notifications.id", ondelete="CASCADE"), nullable=False),
    Column("did", ID, nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
)
Index("ix_notification_items_nid_ts", notification_items.c.nid, notification_items.c.ts)

# Message exports (S56–S59). ``request`` holds the request as the contract echoes it; the archive
# lives in ``export_dir`` until ``expires_on``. Status: Received | InProgress | Success | Failure |
# Served | Expired. The requester is a user (``uid``), an application (``aid`` only) or a device.
exports = Table(
    "exports",
    metadata,
    Column("id", ID, primary_key=True),
    Column("uid", ID, nullable=True),
    Column("aid", ID, nullable=True),
    Column("did", ID, nullable=True),
    Column("request", JSON, nullable=False),
    Column("status", String(12), nullable=False),
    Column("md5", String(32), nullable=True),
    Column("file_size", BigInteger, nullable=True),
    Column("total_messages", BigInteger, nullable=True),
    Column("error", Text, nullable=True),
    Column("expires_on", BigInteger, nullable=True),
    Column("created_on", BigInteger, nullable=False),
    Column("modified_on", BigInteger, nullable=False),
)
Index("ix_exports_uid_created", exports.c.uid, exports.c.created_on)
Index("ix_exports_aid_created", exports.c.aid, exports.c.created_on)
Index("ix_exports_status_expires", exports.c.status, exports.c.expires_on)

# Imports of historical messages (beyond ARTIK): one uploaded file for one device, processed by a
# job. Counts and the first bad rows (``errors``: [{"line", "message"}]) show its progress.
message_imports = Table(
    "message_imports",
    metadata,
    Column("id", ID, primary_key=True),
    Column("sdid", ID, nullable=False),
    Column("uid", ID, nullable=True),
    Column("aid", ID, nullable=True),
    Column("did", ID, nullable=True),
    Column("format", String(10), nullable=False),
    Column("status", String(12), nullable=False),
    Column("total_rows", BigInteger, nullable=False),
    Column("imported", BigInteger, nullable=False),
    Column("duplicates", BigInteger, nullable=False),
    Column("failed", BigInteger, nullable=False),
    Column("errors", JSON, nullable=False),
    Column("error", Text, nullable=True),
    Column("created_on", BigInteger, nullable=False),
    Column("modified_on", BigInteger, nullable=False),
)

# Rollups of numeric message fields (thingcloud/areas/messages/rollups.py): per device, field path and
# UTC hour or day bucket (``size`` in ms), the count, sum, extremes and M2 = sum((x - mean)^2) of the
# bucket's values, the newest ``cts`` they include and the feed seq they are complete through.
# Maintained off the ingest path by a feed consumer; a bucket without a row is read raw.
message_rollups = Table(
    "message_rollups",
    metadata,
    Column("sdid", ID, primary_key=True),
    Column("path", String(500), primary_key=True),
    Column("size", BigInteger, primary_key=True),
    Column("bucket", BigInteger, primary_key=True),
    Column("n", BigInteger, nullable=False),
    Column("total", Double, nullable=False),
    Column("low", Double, nullable=True),
    Column("high", Double, nullable=True),
    Column("m2", Double, nullable=False),
    Column("max_cts", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),  # hour rows: complete through this feed seq
)

# Rules (thingcloud/areas/rules): the rule itself with its body as sent (``body``) and its execution
# counters; per-condition state for AND over time and duration timers; firings keyed by what caused
# them (a feed seq, a timer), which makes firing idempotent under the at-least-once feed; and a
# bounded trace of recent evaluations.
rules = Table(
    "rules",
    metadata,
    Column("id", ID, primary_key=True),
    Column("uid", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("aid", ID, nullable=True),
    Column("name", String(64), nullable=False),
    Column("description", Text, nullable=False),
    Column("body", JSON, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("language_version", Integer, nullable=False),
    Column("index", Integer, nullable=False),
    Column("scope", String(20), nullable=False),
    Column("owner", String(12), nullable=False),
    Column("is_testable", Boolean, nullable=False),
    Column("count_apply", BigInteger, nullable=False, default=0),
    Column("last_apply", BigInteger, nullable=True),
    Column("invalidated_on", BigInteger, nullable=True),
    Column("error", JSON, nullable=True),
    Column("created_on", BigInteger, nullable=False),
    Column("modified_on", BigInteger, nullable=False),
)

rule_states = Table(
    "rule_states",
    metadata,
    Column("rule_id", ID, ForeignKey("rules.id", ondelete="CASCADE"), primary_key=True),
    Column("cond", Integer, primary_key=True),
    Column("did", String(64), primary_key=True),
    Column("result", Boolean, nullable=False),
    Column("since", BigInteger, nullable=True),
    Column("value", JSON, nullable=True),
    Column("ts", BigInteger, nullable=False),
)

rule_firings = Table(
    "rule_firings",
    metadata,
    Column("rule_id", ID, ForeignKey("rules.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("fired_on", BigInteger, nullable=False),
    Column("outcome", String(12), nullable=False),
    Column("detail", JSON, nullable=True),
)
Index("ix_rule_firings_rule_fired", rule_firings.c.rule_id, rule_firings.c.fired_on)

rule_traces = Table(
    "rule_traces",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("rule_id", ID, ForeignKey("rules.id", ondelete="CASCADE"), nullable=False),
    Column("at", BigInteger, nullable=False),
    Column("entry", JSON, nullable=False),
)
Index("ix_rule_traces_rule_id", rule_traces.c.rule_id, rule_traces.c.id)

# Scenes (thingcloud/areas/scenes): rule-style actions sent together on activation, as created (the
# ``actions`` list as sent). Invalidated (``invalidated_on``, ``error``) when a device they use is
# deleted. Listed per user and creating application.
scenes = Table(
    "scenes",
    metadata,
    Column("id", ID, primary_key=True),
    Column("uid", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("aid", ID, nullable=True),
    Column("name", String(64), nullable=False),
    Column("description", Text, nullable=True),
    Column("actions", JSON, nullable=False),
    Column("invalidated_on", BigInteger, nullable=True),
    Column("error", JSON, nullable=True),
    Column("created_on", BigInteger, nullable=False),
    Column("modified_on", BigInteger, nullable=False),
)
Index("ix_scenes_uid_aid", scenes.c.uid, scenes.c.aid, scenes.c.created_on)

# --- Device management: configuration, manifest, properties (thingcloud/areas/devicemgmt) ------------
# Per device type: the DM configuration (§3.16 DeviceTypesInfo; no row = the defaults) and the DM
# manifest (server and device property definitions; no row = the default manifest).
dm_configs = Table(
    "dm_configs",
    metadata,
    Column("dtid", String(100), ForeignKey("device_types.id", ondelete="CASCADE"), primary_key=True),
    Column("device_properties_enabled", Boolean, nullable=False),
    Column("pmin", Integer, nullable=False),
    Column("pmax", Integer, nullable=False),
    Column("task_expires_after", Integer, nullable=False),
    Column("created_on", BigInteger, nullable=False),
    Column("modified_on", BigInteger, nullable=False),
)

dm_manifests = Table(
    "dm_manifests",
    metadata,
    Column("dtid", String(100), ForeignKey("device_types.id", ondelete="CASCADE"), primary_key=True),
    Column("document", JSON, nullable=False),
    Column("created_on", BigInteger, nullable=False),
    Column("modified_on", BigInteger, nullable=False),
)

# Every stored property leaf of a device, flattened: ``path`` is the full dot path
# (``serverProperties.name``, ``deviceProperties.device.timezone``, ``systemProperties.lastRegistration``).
# ``match`` is the value's canonical text (what a ``filter`` compares); ``dtid`` is copied from the
# device so one index answers "devices of this type whose path has this value".
dm_properties = Table(
    "dm_properties",
    metadata,
    Column("did", ID, ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
    Column("path", String(500), primary_key=True),
    Column("dtid", String(100), nullable=False),
    Column("value", JSON, nullable=True),
    Column("match", String(200), nullable=False),
    Column("ts", BigInteger, nullable=False),
)
Index(
    "ix_dm_properties_filter",
    dm_properties.c.dtid,
    dm_properties.c.path,
    dm_properties.c.match,
    dm_properties.c.did,
)

# --- Device management tasks (thingcloud/areas/devicemgmt/tasks.py, task_delivery.py, ota.py) ----------

dm_tasks = Table(
    "dm_tasks",
    metadata,
    Column("id", ID, primary_key=True),
    Column("dtid", String(100), ForeignKey("device_types.id", ondelete="CASCADE"), nullable=False),
    Column("filter", Text, nullable=True),
    Column("dids", JSON, nullable=True),  # as requested (None for a filter task)
    Column("task_type", String(2), nullable=False),  # R | W | E
    Column("property", String(300), nullable=False),
    Column("parameters", JSON, nullable=False),  # taskParameters as accepted
    Column("needs_acceptance", Boolean, nullable=False),
    Column("status", String(12), nullable=False),  # REQUESTED | QUEUING | PROCESSING | COMPLETE | CANCELLED
    Column("expires_on", BigInteger, nullable=False),
    Column("created_on", BigInteger, nullable=False),
    Column("modified_on", BigInteger, nullable=False),
)
Index("ix_dm_tasks_dtid_created", dm_tasks.c.dtid, dm_tasks.c.created_on)

dm_device_tasks = Table(
    "dm_device_tasks",
    metadata,
    Column("tid", ID, ForeignKey("dm_tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("did", ID, ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("acceptance", String(12), nullable=False),  # NOT_REQUIRED | WAITING | ACCEPTED | REJECTED
    Column("attempts", Integer, nullable=False),
    Column("error_code", String(40), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("result", JSON, nullable=True),  # what the device answered
    Column("sent_at", BigInteger, nullable=True),  # last delivery to a connection
    Column("ts", BigInteger, nullable=False),  # last status change
)
Index("ix_dm_device_tasks_did_status", dm_device_tasks.c.did, dm_device_tasks.c.status)
Index("ix_dm_device_tasks_tid_status", dm_device_tasks.c.tid, dm_device_tasks.c.status)

dm_task_history = Table(
    "dm_task_history",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("tid", ID, ForeignKey("dm_tasks.id", ondelete="CASCADE"), nullable=False),
    Column("did", ID, nullable=False),
    Column("status", String(16), nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("error_code", String(40), nullable=True),
    Column("error_message", Text, nullable=True),
)
Index("ix_dm_task_history_tid", dm_task_history.c.tid, dm_task_history.c.id)

dm_updates = Table(
    "dm_updates",
    metadata,
    Column("id", ID, primary_key=True),
    Column(
        "dtid", String(100), ForeignKey("device_types.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    Column("version", String(100), nullable=False),
    Column("filename", String(200), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("created_on", BigInteger, nullable=False),
)
