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
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    Text,
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
