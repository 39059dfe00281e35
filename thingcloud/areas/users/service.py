"""Users: creating and finding accounts, passwords, deletion, and application user properties.

Used by the REST routes, the sign-up page, and the ``thingcloud users`` CLI alike.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from thingcloud import tables as t
from thingcloud.areas.devices.service import announce_removal, record_removal, remove_devices
from thingcloud.areas.users.schemas import AppProperties, User
from thingcloud.auth.crypto import hash_password
from thingcloud.errors import (
    Conflict,
    EmailTaken,
    FieldError,
    Forbidden,
    NotFound,
    UsernameTaken,
    UserNotFound,
    ValidationFailed,
)
from thingcloud.ids import new_id
from thingcloud.runtime import Runtime

EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{2,63}$")
MIN_PASSWORD = 8


def to_user(row: Any) -> User:
    return User(
        id=row["id"],
        name=row["name"],
        email=row["email"],
        fullName=row["full_name"],
        saIdentity=row.get("sa_identity"),
        createdOn=row["created_on"],
        modifiedOn=row["modified_on"],
    )


def validate_new_user(email: str, password: str, name: str | None) -> list[FieldError]:
    problems: list[FieldError] = []
    if not EMAIL.match(email) or len(email) > 254:
        problems.append(FieldError("email", ("Invalid email",)))
    if len(password) < MIN_PASSWORD:
        problems.append(FieldError("password", (f"Minimum length {MIN_PASSWORD}",)))
    if len(password) > 200:
        problems.append(FieldError("password", ("Maximum length 200",)))
    if name is not None and not USERNAME.match(name):
        problems.append(FieldError("name", ("Invalid user name: 3-64 letters, digits, '.', '_' or '-'",)))
    return problems


async def create_user(
    rt: Runtime,
    email: str,
    password: str,
    name: str | None = None,
    full_name: str | None = None,
    is_admin: bool = False,
) -> User:
    email = email.strip().lower()
    problems = validate_new_user(email, password, name)
    if problems:
        raise ValidationFailed("Validation Error", problems)
    password_hash = await hash_password(password)
    now = rt.clock.now_ms()
    uid = new_id()
    async with rt.db.write() as conn:
        if (await conn.execute(select(t.users.c.id).where(t.users.c.email == email))).first():
            raise EmailTaken()
        username = name or await _free_username(conn, email.split("@", 1)[0])
        if name and (await conn.execute(select(t.users.c.id).where(t.users.c.name == name))).first():
            raise UsernameTaken()
        values = {
            "id": uid,
            "name": username,
            "email": email,
            "full_name": full_name or username,
            "password_hash": password_hash,
            "is_admin": is_admin,
            "created_on": now,
            "modified_on": now,
        }
        try:
            await conn.execute(insert(t.users).values(**values))
        except IntegrityError as exc:  # a concurrent sign-up with the same email or name
            raise EmailTaken() from exc
    await rt.bus.publish("user.created", {"uid": uid})
    return to_user(values)


async def _free_username(conn: Any, local_part: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_.\-]", "", local_part)[:56] or "user"
    if len(base) < 3:
        base = (base + "user")[:8]
    candidate, n = base, 1
    while (await conn.execute(select(t.users.c.id).where(t.users.c.name == candidate))).first():
        n += 1
        candidate = f"{base}{n}"
    return candidate


async def get_user(rt: Runtime, uid: str) -> User:
    async with rt.db.read() as conn:
        row = (await conn.execute(select(t.users).where(t.users.c.id == uid))).mappings().first()
    if row is None:
        raise UserNotFound()
    return to_user(row)


async def find_user_by_email(rt: Runtime, email: str) -> dict[str, Any] | None:
    async with rt.db.read() as conn:
        row = (
            (await conn.execute(select(t.users).where(t.users.c.email == email.strip().lower())))
            .mappings()
            .first()
        )
    return dict(row) if row else None


async def count_users(rt: Runtime) -> int:
    async with rt.db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(t.users))).scalar_one())


async def set_password(rt: Runtime, email: str, password: str) -> User:
    problems = [p for p in validate_new_user("a@b.cd", password, None)]
    if problems:
        raise ValidationFailed("Validation Error", problems)
    password_hash = await hash_password(password)
    async with rt.db.write() as conn:
        row = (
            (
                await conn.execute(
                    update(t.users)
                    .where(t.users.c.email == email.strip().lower())
                    .values(password_hash=password_hash, modified_on=rt.clock.now_ms())
                    .returning(*t.users.c)
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise UserNotFound()
        # A new password ends every browser session of the account.
        await conn.execute(delete(t.web_sessions).where(t.web_sessions.c.uid == row["id"]))
    return to_user(row)


async def delete_user(rt: Runtime, email: str) -> User:
    """Delete a user with everything they own: devices (their messages in the background), device
    types no one else uses, tokens, applications, grants, properties, sessions, memberships."""
    async with rt.db.write() as conn:
        row = (
            (await conn.execute(select(t.users).where(t.users.c.email == email.strip().lower())))
            .mappings()
            .first()
        )
        if row is None:
            raise UserNotFound()
        uid = row["id"]
        # Device types of the user that other users' devices still use cannot go with the user.
        in_use = (
            (
                await conn.execute(
                    select(t.device_types.c.id)
                    .join(t.devices, t.devices.c.dtid == t.device_types.c.id)
                    .where(t.device_types.c.owner_uid == uid, t.devices.c.uid != uid)
                    .distinct()
                )
            )
            .scalars()
            .all()
        )
        if in_use:
            raise Conflict(
                "The user's device types are used by other users' devices: " + ", ".join(sorted(in_use))
            )
        owned = (await conn.execute(select(t.devices).where(t.devices.c.uid == uid))).mappings().all()
        removal = await remove_devices(rt, conn, list(owned))
        owned_apps = select(t.applications.c.id).where(t.applications.c.owner_uid == uid)
        hashes = [
            r[0]
            for r in await conn.execute(
                select(t.tokens.c.access_hash).where(
                    (t.tokens.c.uid == uid) | (t.tokens.c.aid.in_(owned_apps))
                )
            )
        ]
        # Explicit deletes in dependency order: SQLite only cascades with foreign_keys=ON, and
        # later areas add tables that reference users; each hooks ``user.deleted`` on the bus.
        await conn.execute(delete(t.tokens).where((t.tokens.c.uid == uid) | (t.tokens.c.aid.in_(owned_apps))))
        for table in (t.user_properties, t.grants):
            await conn.execute(delete(table).where((table.c.uid == uid) | (table.c.aid.in_(owned_apps))))
        for table in (t.authorization_codes, t.device_codes):
            await conn.execute(delete(table).where((table.c.uid == uid) | (table.c.aid.in_(owned_apps))))
        await conn.execute(delete(t.web_sessions).where(t.web_sessions.c.uid == uid))
        await conn.execute(delete(t.applications).where(t.applications.c.owner_uid == uid))
        await conn.execute(delete(t.users).where(t.users.c.id == uid))
        await record_removal(rt, conn, removal)
    await announce_removal(rt, removal)
    await rt.bus.publish("token.revoked", {"hashes": hashes})
    await rt.bus.publish("user.deleted", {"uid": uid})
    return to_user(row)


# --- Application user properties (S2–S5) ----------------------------------------------------------


def _props(row: Any) -> AppProperties:
    return AppProperties(uid=row["uid"], aid=row["aid"], properties=row["properties"])


def _same_app(token_aid: str, *given: str | None) -> None:
    for aid in given:
        if aid is not None and aid != token_aid:
            raise Forbidden("The aid must be the application of the access token")


async def _profile_updated(rt: Runtime, uid: str, aid: str | None) -> None:
    """``user.profile.updated`` on the bus after the commit: /events sessions of the user get it."""
    await rt.bus.publish("user.profile.updated", {"uid": uid, "aid": aid, "ts": rt.clock.now_ms()})


async def get_properties(rt: Runtime, uid: str, token_aid: str, aid: str | None) -> AppProperties:
    _same_app(token_aid, aid)
    async with rt.db.read() as conn:
        row = (
            (
                await conn.execute(
                    select(t.user_properties).where(
                        t.user_properties.c.uid == uid, t.user_properties.c.aid == token_aid
                    )
                )
            )
            .mappings()
            .first()
        )
    if row is None:
        raise NotFound("No properties stored for this user and application")
    return _props(row)


async def create_properties(
    rt: Runtime, uid: str, token_aid: str, aid: str | None, body_aid: str | None, properties: str
) -> AppProperties:
    _same_app(token_aid, aid, body_aid)
    now = rt.clock.now_ms()
    async with rt.db.write() as conn:
        exists = await conn.execute(
            select(t.user_properties.c.uid).where(
                t.user_properties.c.uid == uid, t.user_properties.c.aid == token_aid
            )
        )
        if exists.first():
            raise Conflict("Properties already exist for this user and application; use PUT to change them")
        await conn.execute(
            insert(t.user_properties).values(
                uid=uid, aid=token_aid, properties=properties, created_on=now, modified_on=now
            )
        )
    await _profile_updated(rt, uid, token_aid)
    return AppProperties(uid=uid, aid=token_aid, properties=properties)


async def update_properties(
    rt: Runtime, uid: str, token_aid: str, aid: str | None, body_aid: str | None, properties: str
) -> AppProperties:
    _same_app(token_aid, aid, body_aid)
    async with rt.db.write() as conn:
        result = await conn.execute(
            update(t.user_properties)
            .where(t.user_properties.c.uid == uid, t.user_properties.c.aid == token_aid)
            .values(properties=properties, modified_on=rt.clock.now_ms())
        )
        if result.rowcount == 0:
            raise NotFound("No properties stored for this user and application")
    await _profile_updated(rt, uid, token_aid)
    return AppProperties(uid=uid, aid=token_aid, properties=properties)


async def delete_properties(rt: Runtime, uid: str, token_aid: str, aid: str | None) -> AppProperties:
    _same_app(token_aid, aid)
    async with rt.db.write() as conn:
        result = await conn.execute(
            delete(t.user_properties).where(
                t.user_properties.c.uid == uid, t.user_properties.c.aid == token_aid
            )
        )
        if result.rowcount == 0:
            raise NotFound("No properties stored for this user and application")
    await _profile_updated(rt, uid, token_aid)
    return AppProperties(uid=uid, aid=token_aid, properties="")
