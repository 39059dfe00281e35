"""Organizations: creation, lookup, and membership with the roles administrator and developer.

An organization owns device types and applications (REFERENCE.md §1.5 names its administrators and
its applications in the rules of device management and approved lists). Its creator becomes its first
administrator, and an organization always keeps at least one: removing or demoting the last one fails.
Who may call what is decided in ``auth.permissions`` (members see, administrators manage).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from thingcloud import tables as t
from thingcloud.areas.organizations.schemas import Member, Organization
from thingcloud.auth.permissions import ORG_ROLES, Principal, app_organization
from thingcloud.errors import Conflict, FieldError, NotFound, UserNotFound, ValidationFailed
from thingcloud.ids import new_id
from thingcloud.runtime import Runtime

LAST_ADMINISTRATOR = "An organization needs at least one administrator"
members_c = t.organization_members.c


def to_organization(row: Any, role: str | None) -> Organization:
    return Organization(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        createdBy=row["created_by"],
        createdOn=row["created_on"],
        modifiedOn=row["modified_on"],
        role=role,  # a stored role is always one of ORG_ROLES
    )


def to_member(row: Any) -> Member:
    return Member(
        uid=row["uid"],
        email=row["email"],
        name=row["name"],
        fullName=row["full_name"],
        role=row["role"],
        createdOn=row["created_on"],
    )


def validate_organization(name: str | None, description: str | None, *, creating: bool) -> None:
    problems: list[FieldError] = []
    if creating and name is None:
        problems.append(FieldError("name", ("Required parameter",)))
    elif name is not None and not 1 <= len(name.strip()) <= 100:
        problems.append(FieldError("name", ("Length must be 1-100",)))
    if description is not None and len(description) > 1500:
        problems.append(FieldError("description", ("Maximum length 1500",)))
    if problems:
        raise ValidationFailed("Validation Error", problems)


def validate_role(role: str | None) -> str:
    if role is None:
        raise ValidationFailed.field("role", "Required parameter")
    if role not in ORG_ROLES:
        raise ValidationFailed.field("role", f"Must be one of {', '.join(ORG_ROLES)}")
    return role


async def create_organization(
    rt: Runtime, creator_uid: str, name: str | None, description: str | None = None
) -> Organization:
    """A new organization, with its creator as administrator."""
    validate_organization(name, description, creating=True)
    assert name is not None
    now = rt.clock.now_ms()
    values = {
        "id": new_id(),
        "name": name.strip(),
        "description": description,
        "created_by": creator_uid,
        "created_on": now,
        "modified_on": now,
    }
    async with rt.db.write() as conn:
        if not (await conn.execute(select(t.users.c.id).where(t.users.c.id == creator_uid))).first():
            raise UserNotFound()
        await conn.execute(insert(t.organizations).values(**values))
        await conn.execute(
            insert(t.organization_members).values(
                oid=values["id"], uid=creator_uid, role="administrator", created_on=now
            )
        )
    await rt.bus.publish("organization.new", {"oid": values["id"]})
    return to_organization(values, "administrator")


async def organization_row(rt: Runtime, oid: str) -> dict[str, Any]:
    async with rt.db.read() as conn:
        row = (
            (await conn.execute(select(t.organizations).where(t.organizations.c.id == oid)))
            .mappings()
            .first()
        )
    if row is None:
        raise NotFound("Organization not found")
    return dict(row)


async def _role(conn: Any, oid: str, uid: str | None) -> str | None:
    if uid is None:
        return None
    found = await conn.execute(select(members_c.role).where(members_c.oid == oid, members_c.uid == uid))
    role: str | None = found.scalar()
    return role


async def get_organization(rt: Runtime, oid: str, viewer_uid: str | None = None) -> Organization:
    row = await organization_row(rt, oid)
    async with rt.db.read() as conn:
        return to_organization(row, await _role(conn, oid, viewer_uid))


async def list_organizations(
    rt: Runtime, principal: Principal, count: int, offset: int
) -> tuple[list[Organization], int]:
    """The caller's organizations: a user's memberships, or an application's own organization."""
    orgs = t.organizations.c
    if principal.kind == "user":
        where: ColumnElement[bool] = orgs.id.in_(select(members_c.oid).where(members_c.uid == principal.uid))
    else:
        where = orgs.id == (await app_organization(rt, principal.aid) if principal.kind == "app" else None)
    role = (
        select(members_c.role)
        .where(members_c.oid == orgs.id, members_c.uid == principal.uid)
        .scalar_subquery()
        .label("role")
    )
    async with rt.db.read() as conn:
        total = (
            await conn.execute(select(func.count()).select_from(t.organizations).where(where))
        ).scalar_one()
        rows = await conn.execute(
            select(t.organizations, role)
            .where(where)
            .order_by(orgs.name, orgs.id)
            .limit(count)
            .offset(offset)
        )
        items = [to_organization(row, row["role"]) for row in rows.mappings()]
    return items, int(total)


async def update_organization(
    rt: Runtime, oid: str, name: str | None, description: str | None, viewer_uid: str | None = None
) -> Organization:
    validate_organization(name, description, creating=False)
    changes: dict[str, Any] = {"modified_on": rt.clock.now_ms()}
    if name is not None:
        changes["name"] = name.strip()
    if description is not None:
        changes["description"] = description
    async with rt.db.write() as conn:
        result = await conn.execute(
            update(t.organizations).where(t.organizations.c.id == oid).values(**changes)
        )
        if result.rowcount == 0:
            raise NotFound("Organization not found")
    return await get_organization(rt, oid, viewer_uid)


# --- Members -------------------------------------------------------------------------------------------


def _members_query() -> Any:
    return select(
        members_c.uid,
        members_c.role,
        members_c.created_on,
        t.users.c.email,
        t.users.c.name,
        t.users.c.full_name,
    ).select_from(t.organization_members.join(t.users, t.users.c.id == members_c.uid))


async def list_members(rt: Runtime, oid: str, count: int, offset: int) -> tuple[list[Member], int]:
    await organization_row(rt, oid)
    async with rt.db.read() as conn:
        total = (
            await conn.execute(
                select(func.count()).select_from(t.organization_members).where(members_c.oid == oid)
            )
        ).scalar_one()
        rows = await conn.execute(
            _members_query()
            .where(members_c.oid == oid)
            .order_by(members_c.created_on, members_c.uid)
            .limit(count)
            .offset(offset)
        )
        return [to_member(row) for row in rows.mappings()], int(total)


async def _member(conn: Any, oid: str, uid: str) -> Member:
    row = (
        (await conn.execute(_members_query().where(members_c.oid == oid, members_c.uid == uid)))
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound("No such member in this organization")
    return to_member(row)


async def add_member(
    rt: Runtime, oid: str, *, role: str | None, email: str | None = None, uid: str | None = None
) -> Member:
    """Add an existing user (by email or id) to an organization in a role."""
    problems: list[FieldError] = []
    if not email and not uid:
        problems.append(FieldError("email", ("Required parameter (or uid)",)))
    if role is None or role not in ORG_ROLES:
        problems.append(FieldError("role", (f"Must be one of {', '.join(ORG_ROLES)}",)))
    if problems:
        raise ValidationFailed("Validation Error", problems)
    await organization_row(rt, oid)
    users = t.users.c
    async with rt.db.write() as conn:
        found = users.id == uid if uid else users.email == str(email).strip().lower()
        member_uid = (await conn.execute(select(users.id).where(found))).scalar()
        if member_uid is None:
            raise UserNotFound()
        if await _role(conn, oid, member_uid) is not None:
            raise Conflict("The user is already a member of this organization")
        try:
            await conn.execute(
                insert(t.organization_members).values(
                    oid=oid, uid=member_uid, role=role, created_on=rt.clock.now_ms()
                )
            )
        except IntegrityError as exc:  # a concurrent add of the same user
            raise Conflict("The user is already a member of this organization") from exc
        member = await _member(conn, oid, member_uid)
    await rt.bus.publish("organization.member.added", {"oid": oid, "uid": member.uid})
    return member


async def _keep_an_administrator(conn: Any, oid: str, uid: str) -> None:
    """Refuse to leave the organization without administrators (rows locked against a concurrent demote)."""
    admins = [
        r[0]
        for r in await conn.execute(
            select(members_c.uid)
            .where(members_c.oid == oid, members_c.role == "administrator")
            .with_for_update()
        )
    ]
    if admins == [uid]:
        raise ValidationFailed.field("role", LAST_ADMINISTRATOR, message=LAST_ADMINISTRATOR)


async def set_member_role(rt: Runtime, oid: str, uid: str, role: str | None) -> Member:
    role = validate_role(role)
    await organization_row(rt, oid)
    async with rt.db.write() as conn:
        current = await _member(conn, oid, uid)
        if current.role == "administrator" and role != "administrator":
            await _keep_an_administrator(conn, oid, uid)
        await conn.execute(
            update(t.organization_members).where(members_c.oid == oid, members_c.uid == uid).values(role=role)
        )
        member = await _member(conn, oid, uid)
    await rt.bus.publish("organization.member.updated", {"oid": oid, "uid": uid, "role": role})
    return member


async def remove_member(rt: Runtime, oid: str, uid: str) -> Member:
    await organization_row(rt, oid)
    async with rt.db.write() as conn:
        member = await _member(conn, oid, uid)
        if member.role == "administrator":
            await _keep_an_administrator(conn, oid, uid)
        await conn.execute(delete(t.organization_members).where(members_c.oid == oid, members_c.uid == uid))
    await rt.bus.publish("organization.member.removed", {"oid": oid, "uid": uid})
    return member
