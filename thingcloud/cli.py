"""The ``thingcloud`` command: serve, migrate, openapi, and administration of users and applications.

Every command calls the same service functions as the REST API, through a ``Runtime`` built from the
same settings (environment variables, overridden by flags).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer

from thingcloud.settings import Settings

T = TypeVar("T")

# No local variables in tracebacks: they would show settings, passwords and secrets on the terminal.
cli = typer.Typer(
    help="ThingCloud: an ARTIK Cloud-compatible IoT cloud.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
users_cli = typer.Typer(help="Manage user accounts.", no_args_is_help=True)
apps_cli = typer.Typer(help="Manage OAuth2 client applications.", no_args_is_help=True)
cli.add_typer(users_cli, name="users")
cli.add_typer(apps_cli, name="apps")
orgs_cli = typer.Typer(help="Manage organizations and their members.", no_args_is_help=True)
devicetypes_cli = typer.Typer(help="Manage device types and their manifests.", no_args_is_help=True)
cli.add_typer(orgs_cli, name="orgs")
cli.add_typer(devicetypes_cli, name="devicetypes")

DatabaseOption = typer.Option(None, "--database-url", help="SQLAlchemy URL (env THINGCLOUD_DATABASE_URL)")


def _settings(database_url: str | None = None, **overrides: Any) -> Settings:
    settings = Settings()
    changes = {k: v for k, v in overrides.items() if v is not None}
    if database_url:
        changes["database_url"] = database_url
    return settings.model_copy(update=changes) if changes else settings


def _with_runtime(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(rt)`` against a migrated database.

    Service errors and an unusable database become one readable line on stderr and exit status 1,
    never a traceback.
    """
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    from thingcloud.errors import ApiError
    from thingcloud.migrate import migrate
    from thingcloud.runtime import Runtime

    async def run() -> T:
        rt = Runtime.build(settings)
        try:
            await migrate(rt.db)
            await rt.bus.start()  # over NATS: revocations and invalidations reach the running nodes
            return await work(rt)
        finally:
            await rt.close()

    try:
        return asyncio.run(run())
    except ApiError as exc:
        typer.echo(describe_error(exc), err=True)
        raise typer.Exit(1) from None
    except (OSError, SQLAlchemyError) as exc:
        reason = str(exc.orig) if isinstance(exc, DBAPIError) else str(exc)
        typer.echo(f"error: cannot use the database {database_label(settings)}: {reason}", err=True)
        raise typer.Exit(1) from None


def describe_error(exc: Any) -> str:
    """``error: <message>`` plus one line per field error, for people rather than programs."""
    body = exc.body()["error"]
    lines = [f"error: {body['message']} (HTTP {exc.status}, code {body['code']})"]
    for group in body.get("errors", []):
        lines.extend(f"  {item['field']}: {'; '.join(item['messages'])}" for item in group)
    return "\n".join(lines)


def database_label(settings: Settings) -> str:
    """The database URL with any password masked: fit for logs and messages."""
    from sqlalchemy.engine import make_url

    return make_url(settings.resolved_database_url).render_as_string(hide_password=True)


def _print(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2))


@cli.command()
def serve(
    host: str = typer.Option(None, help="Address to listen on (default 127.0.0.1)"),
    port: int = typer.Option(None, help="Port to listen on (default 8080)"),
    database_url: str = DatabaseOption,
    public_url: str = typer.Option(None, help="Externally visible base URL"),
) -> None:
    """Apply migrations and serve the API."""
    import logging
    import signal
    import socket

    import uvicorn

    from thingcloud.app import create_app
    from thingcloud.logs import configure_logging

    settings = _settings(database_url, host=host, port=port, public_url=public_url)
    configure_logging(settings.log_level, settings.log_json)
    log = logging.getLogger("thingcloud")
    try:
        with socket.create_server((settings.host, settings.port)):
            pass
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        typer.echo(f"error: cannot listen on {settings.host}:{settings.port}: {reason}", err=True)
        raise typer.Exit(1) from None
    database = database_label(settings)
    log.info(
        "starting: listening on http://%s:%s, database %s",
        settings.host,
        settings.port,
        database,
        extra={
            "fields": {
                "listen": f"{settings.host}:{settings.port}",
                "public_url": settings.public_base,
                "database": database,
            }
        },
    )
    # Migrate before uvicorn starts so that an unreachable database is one clear line and exit 1,
    # not a lifespan traceback; the lifespan's own migrate is then a no-op.
    _with_runtime(settings, _nothing)
    # uvicorn finishes in-flight requests on SIGTERM/SIGINT, then re-raises the signal under the
    # handler that was installed before it started. A no-op handler makes that re-raise a normal
    # return, so a graceful shutdown exits 0 instead of dying by the signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _sig, _frame: None)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
        server_header=False,
        # uvicorn would rewrite the client address from X-Forwarded-For for 127.0.0.1 peers; only
        # THINGCLOUD_TRUSTED_PROXIES decides that (rest/deps.client_address).
        proxy_headers=False,
        ws_per_message_deflate=settings.websocket_compression,
    )


async def _nothing(_rt: Any) -> None:
    return None


@cli.command()
def migrate(database_url: str = DatabaseOption) -> None:
    """Apply database migrations (safe to run from several nodes at once)."""
    from thingcloud.migrate import current_revision

    async def work(rt: Any) -> str | None:
        return await current_revision(rt.db)

    revision = _with_runtime(_settings(database_url), work)
    typer.echo(f"database at revision {revision}")


@cli.command()
def openapi() -> None:
    """Print the OpenAPI document without starting a server."""
    from thingcloud.app import create_app

    sys.stdout.write(json.dumps(create_app(Settings()).openapi(), indent=1) + "\n")


@users_cli.command("create")
def users_create(
    email: str = typer.Option(...),
    password: str = typer.Option(..., prompt=True, hide_input=True),
    name: str = typer.Option(None, help="User name (default: from the email)"),
    full_name: str = typer.Option(None),
    admin: bool = typer.Option(False, help="Make the user an administrator"),
    database_url: str = DatabaseOption,
) -> None:
    """Create a user and print it as JSON."""
    from thingcloud.areas.users import service

    async def work(rt: Any) -> Any:
        return await service.create_user(rt, email, password, name, full_name, is_admin=admin)

    user = _with_runtime(_settings(database_url), work)
    _print({"id": user.id, "email": user.email, "name": user.name, "fullName": user.fullName})


@users_cli.command("set-password")
def users_set_password(
    email: str = typer.Option(...),
    password: str = typer.Option(..., prompt=True, hide_input=True),
    database_url: str = DatabaseOption,
) -> None:
    """Set a user's password (ends their browser sessions)."""
    from thingcloud.areas.users import service

    async def work(rt: Any) -> Any:
        return await service.set_password(rt, email, password)

    user = _with_runtime(_settings(database_url), work)
    _print({"id": user.id, "email": user.email})


@users_cli.command("delete")
def users_delete(email: str = typer.Option(...), database_url: str = DatabaseOption) -> None:
    """Delete a user and everything the user owns."""
    from thingcloud.areas.users import service

    async def work(rt: Any) -> Any:
        return await service.delete_user(rt, email)

    user = _with_runtime(_settings(database_url), work)
    _print({"id": user.id, "email": user.email, "deleted": True})


@apps_cli.command("create")
def apps_create(
    name: str = typer.Option(...),
    owner: str = typer.Option(..., help="Email of the owning user"),
    redirect_uri: list[str] = typer.Option(..., help="Registered redirect URI (repeatable)"),
    password_grant: bool = typer.Option(False, "--password-grant", help="Allow the password grant"),
    permissions: str = typer.Option(
        None,
        help="Narrow the default READ+WRITE on everything, e.g. 'profile:READ;devicetypes:*:READ'",
    ),
    organization: str = typer.Option(None, help="Organization id the application belongs to"),
    database_url: str = DatabaseOption,
) -> None:
    """Register an OAuth2 application and print its client_id and client_secret."""
    from thingcloud.areas.users import service as users
    from thingcloud.auth import applications as apps
    from thingcloud.errors import UserNotFound

    async def work(rt: Any) -> Any:
        user = await users.find_user_by_email(rt, owner)
        if user is None:
            raise UserNotFound(f"No user with email {owner}")
        return await apps.create_application(
            rt,
            name,
            user["id"],
            redirect_uri,
            password_grant,
            permissions=apps.parse_permissions(permissions),
            oid=organization,
        )

    app, secret = _with_runtime(_settings(database_url), work)
    _print({**app.public(), "client_secret": secret})


@apps_cli.command("rotate-secret")
def apps_rotate_secret(client_id: str = typer.Argument(...), database_url: str = DatabaseOption) -> None:
    """Replace an application's client secret; the old one stops working at once."""
    from thingcloud.auth import applications as apps

    async def work(rt: Any) -> Any:
        return await apps.rotate_secret(rt, client_id)

    app, secret = _with_runtime(_settings(database_url), work)
    _print({"client_id": app.id, "client_secret": secret})


async def _user_id(rt: Any, email: str) -> str:
    from thingcloud.areas.users import service as users
    from thingcloud.errors import UserNotFound

    user = await users.find_user_by_email(rt, email)
    if user is None:
        raise UserNotFound(f"No user with email {email}")
    return str(user["id"])


@orgs_cli.command("create")
def orgs_create(
    name: str = typer.Option(...),
    owner: str = typer.Option(..., help="Email of the first administrator"),
    description: str = typer.Option(None),
    database_url: str = DatabaseOption,
) -> None:
    """Create an organization administered by OWNER and print it as JSON."""
    from thingcloud.areas.organizations import service

    async def work(rt: Any) -> Any:
        return await service.create_organization(rt, await _user_id(rt, owner), name, description)

    _print(_with_runtime(_settings(database_url), work).model_dump())


@orgs_cli.command("add-member")
def orgs_add_member(
    oid: str = typer.Argument(..., help="Organization id"),
    email: str = typer.Option(..., help="Email of an existing user"),
    role: str = typer.Option("developer", help="administrator or developer"),
    database_url: str = DatabaseOption,
) -> None:
    """Add a user to an organization and print the membership as JSON."""
    from thingcloud.areas.organizations import service

    async def work(rt: Any) -> Any:
        return await service.add_member(rt, oid, role=role, email=email)

    _print(_with_runtime(_settings(database_url), work).model_dump())


@devicetypes_cli.command("create")
def devicetypes_create(
    owner: str = typer.Option(..., help="Email of the owning user (a member, with --organization)"),
    name: str = typer.Option(...),
    unique_name: str = typer.Option(..., help="Java-package style, e.g. com.example.thermostat"),
    organization: str = typer.Option(None, help="Organization id that owns the type"),
    published: bool = typer.Option(False, "--published", help="Visible to everyone"),
    description: str = typer.Option(None),
    tag: list[str] = typer.Option(None, help="Tag (repeatable)"),
    database_url: str = DatabaseOption,
) -> None:
    """Create a device type (no manifest yet) and print it as JSON."""
    from thingcloud.areas.devicetypes import service
    from thingcloud.auth.permissions import org_role
    from thingcloud.errors import Forbidden

    async def work(rt: Any) -> Any:
        uid = await _user_id(rt, owner)
        if organization is not None and await org_role(rt, uid, organization) is None:
            raise Forbidden(f"{owner} is not a member of organization {organization}")
        row = await service.create_device_type(
            rt,
            name=name,
            unique_name=unique_name,
            owner_uid=uid,
            oid=organization,
            description=description,
            published=published,
            tags=tag,
        )
        return service.to_device_type(row, owned_by_caller=True)

    _print(_with_runtime(_settings(database_url), work).model_dump())


@devicetypes_cli.command("add-manifest")
def devicetypes_add_manifest(
    dtid: str = typer.Argument(..., help="Device type id"),
    file: typer.FileText = typer.Argument(..., help="Simple Manifest JSON file ('-' for stdin)"),
    database_url: str = DatabaseOption,
) -> None:
    """Add a manifest version to a device type and print {"version": N}."""
    from thingcloud.areas.devicetypes import service

    text = file.read()

    async def work(rt: Any) -> int:
        return await service.add_manifest(rt, dtid, text, created_by=None)

    _print({"version": _with_runtime(_settings(database_url), work)})


@cli.command()
def simulate(
    devicetype: str = typer.Option(..., "--devicetype", help="Device type id (dt…) of the devices"),
    devices: int = typer.Option(1, min=1, help="Number of devices (reused by name, created if missing)"),
    rate: float = typer.Option(1.0, min=0.0001, help="Messages per second sent by each device"),
    protocol: str = typer.Option("websocket", help="http | websocket | mqtt"),
    url: str = typer.Option(None, help="ThingCloud base URL (default: what `serve` uses)"),
    token: str = typer.Option(
        None, envvar="THINGCLOUD_TOKEN", help="User access token that creates or reuses the devices"
    ),
    duration: float = typer.Option(0.0, min=0.0, help="Stop after this many seconds (0: at Ctrl-C)"),
    mqtt_host: str = typer.Option(None, help="MQTT host (default: the host of --url)"),
    mqtt_port: int = typer.Option(None, help="MQTT port (default THINGCLOUD_MQTT_PORT or 1883)"),
    name_prefix: str = typer.Option("sim", help="Devices are named PREFIX-001, PREFIX-002, …"),
    seed: int = typer.Option(None, help="Seed for reproducible readings"),
    max_in_flight: int = typer.Option(1000, min=1, help="Messages awaiting an acknowledgement, at most"),
    json_summary: bool = typer.Option(False, "--json", help="Print the summary as JSON"),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Log every failed message, not only the first of each kind"
    ),
) -> None:
    """Simulate devices of a type: readings that fit its manifest at RATE msg/s each, acting on the
    actions they receive, until Ctrl-C or --duration; then print a summary."""
    import logging
    from urllib.parse import urlsplit

    from thingcloud.simulator import SimulationConfig, SimulatorError
    from thingcloud.simulator import simulate as run_simulation

    if protocol not in ("http", "websocket", "mqtt"):
        typer.echo("error: --protocol must be http, websocket or mqtt", err=True)
        raise typer.Exit(2)
    if not token:
        typer.echo("error: a user access token is needed: --token or THINGCLOUD_TOKEN", err=True)
        raise typer.Exit(2)
    settings = Settings()
    base = (url or settings.public_base).rstrip("/")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("httpx", "httpcore", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = SimulationConfig(
        url=base,
        token=token,
        dtid=devicetype,
        devices=devices,
        rate=rate,
        protocol=protocol,  # type: ignore[arg-type]  # checked above
        duration=duration,
        mqtt_host=mqtt_host or urlsplit(base).hostname or "127.0.0.1",
        mqtt_port=mqtt_port or int(getattr(settings, "mqtt_port", 1883)),
        name_prefix=name_prefix,
        seed=seed,
        max_in_flight=max_in_flight,
    )
    try:
        summary = asyncio.run(run_simulation(config))
    except SimulatorError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(summary.as_dict()) if json_summary else summary.text())


def main() -> None:
    cli()
