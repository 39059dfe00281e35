"""OAuth2 client applications: registration, secrets, redirect URIs and permissions.

An application has READ and WRITE on the user profile and on every device type unless created with
narrower permissions (REFERENCE.md §1.5). Client secrets are stored encrypted because webhook
notifications are signed with them later.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import insert, select, update

from thingcloud import tables as t
from thingcloud.auth.permissions import AppPermissions
from thingcloud.errors import FieldError, NotFound, UserNotFound, ValidationFailed
from thingcloud.ids import new_id
from thingcloud.runtime import Runtime

CONSOLE_NAME = "ThingCloud Console"


@dataclass(frozen=True)
class Application:
    id: str
    name: str
    owner_uid: str
    redirect_uris: list[str]
    password_grant: bool
    first_party: bool
    permissions: AppPermissions
    secret_encrypted: str
    oid: str | None = None  # the organization the application belongs to

    def public(self) -> dict[str, Any]:
        return {
            "client_id": self.id,
            "name": self.name,
            "owner": self.owner_uid,
            "redirect_uris": self.redirect_uris,
            "password_grant": self.password_grant,
            "permissions": self.permissions.to_json(),
            "organization": self.oid,
        }


def _to_app(row: Any) -> Application:
    return Application(
        id=row["id"],
        name=row["name"],
        owner_uid=row["owner_uid"],
        redirect_uris=list(row["redirect_uris"]),
        password_grant=bool(row["password_grant"]),
        first_party=bool(row["first_party"]),
        permissions=AppPermissions.from_json(row["permissions"]),
        secret_encrypted=row["secret_encrypted"],
        oid=row["oid"],
    )


def validate_redirect_uri(uri: str) -> bool:
    parts = urlsplit(uri)
    if not parts.scheme or parts.fragment:
        return False
    if parts.scheme in ("http", "https"):
        return bool(parts.netloc)
    # Native apps register custom schemes (myapp://callback).
    return bool(parts.netloc or parts.path)


def parse_permissions(spec: str | None) -> AppPermissions:
    """``profile:READ,WRITE;devicetypes:*:READ;devicetypes:dtabc:READ,WRITE`` → AppPermissions."""
    if not spec:
        return AppPermissions()
    profile: frozenset[str] = frozenset()
    device_types: dict[str, frozenset[str]] = {}
    for clause in filter(None, (c.strip() for c in spec.split(";"))):
        head, _, rest = clause.partition(":")
        if head.lower() == "profile":
            profile = _rights(rest, "profile")
        elif head.lower() in ("devicetypes", "devicetype"):
            dtid, _, rights = rest.partition(":")
            if not dtid:
                raise ValidationFailed.field("permissions", f"Missing device type in '{clause}'")
            device_types[dtid] = _rights(rights, clause)
        else:
            raise ValidationFailed.field("permissions", f"Unknown permission target '{head}'")
    return AppPermissions(profile=profile, device_types=device_types)


def _rights(text: str, where: str) -> frozenset[str]:
    rights = frozenset(r.strip().upper() for r in text.split(",") if r.strip())
    if not rights or not rights <= {"READ", "WRITE"}:
        raise ValidationFailed.field("permissions", f"Rights must be READ and/or WRITE in '{where}'")
    return rights


async def create_application(
    rt: Runtime,
    name: str,
    owner_uid: str,
    redirect_uris: list[str],
    password_grant: bool = False,
    first_party: bool = False,
    permissions: AppPermissions | None = None,
    oid: str | None = None,
) -> tuple[Application, str]:
    """Register an application; returns it with its client secret (shown this once).

    With ``oid`` it belongs to that organization, of which its owner must be a member.
    """
    problems: list[FieldError] = []
    if not 1 <= len(name.strip()) <= 100:
        problems.append(FieldError("name", ("Length must be 1-100",)))
    if not redirect_uris:
        problems.append(FieldError("redirect_uri", ("Required parameter",)))
    for i, uri in enumerate(redirect_uris):
        if not validate_redirect_uri(uri):
            problems.append(FieldError(f"redirect_uri.{i}", ("Invalid redirect URI",)))
    if problems:
        raise ValidationFailed("Validation Error", problems)
    secret = secrets.token_hex(16)
    now = rt.clock.now_ms()
    values = {
        "id": new_id(),
        "name": name.strip(),
        "owner_uid": owner_uid,
        "secret_encrypted": rt.box.encrypt(secret),
        "redirect_uris": redirect_uris,
        "password_grant": password_grant,
        "first_party": first_party,
        "permissions": (permissions or AppPermissions()).to_json(),
        "oid": oid,
        "created_on": now,
        "modified_on": now,
    }
    async with rt.db.write() as conn:
        if not (await conn.execute(select(t.users.c.id).where(t.users.c.id == owner_uid))).first():
            raise UserNotFound()
        if (
            oid is not None
            and not (
                await conn.execute(
                    select(t.organization_members.c.uid).where(
                        t.organization_members.c.oid == oid, t.organization_members.c.uid == owner_uid
                    )
                )
            ).first()
        ):
            raise NotFound("No such organization among the owner's organizations")
        await conn.execute(insert(t.applications).values(**values))
    return _to_app(values), secret


async def get_application(rt: Runtime, aid: str) -> Application:
    async with rt.db.read() as conn:
        row = (
            (await conn.execute(select(t.applications).where(t.applications.c.id == aid))).mappings().first()
        )
    if row is None:
        raise NotFound("Application not found")
    return _to_app(row)


async def find_console(rt: Runtime) -> Application | None:
    async with rt.db.read() as conn:
        row = (
            (
                await conn.execute(
                    select(t.applications)
                    .where(t.applications.c.first_party.is_(True), t.applications.c.name == CONSOLE_NAME)
                    .order_by(t.applications.c.created_on)
                )
            )
            .mappings()
            .first()
        )
    return _to_app(row) if row else None


async def rotate_secret(rt: Runtime, aid: str) -> tuple[Application, str]:
    app = await get_application(rt, aid)
    secret = secrets.token_hex(16)
    async with rt.db.write() as conn:
        await conn.execute(
            update(t.applications)
            .where(t.applications.c.id == aid)
            .values(secret_encrypted=rt.box.encrypt(secret), modified_on=rt.clock.now_ms())
        )
    return app, secret


def client_secret(rt: Runtime, app: Application) -> str:
    return rt.box.decrypt(app.secret_encrypted)


def check_secret(rt: Runtime, app: Application, presented: str) -> bool:
    return hmac.compare_digest(client_secret(rt, app).encode(), presented.encode())
