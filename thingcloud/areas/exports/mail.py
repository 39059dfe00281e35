"""The "your export is ready" e-mail (SAMI: "a confirmation email is sent when done").

Sent through the SMTP server of ``THINGCLOUD_SMTP_URL`` (stdlib ``smtplib`` in a worker thread, so a
slow mail server never blocks the event loop); without one the e-mail is logged instead, so a
self-hosted cloud without mail still tells its operator. A mail failure never fails the export.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from sqlalchemy import select

from thingcloud import tables as t
from thingcloud.runtime import Runtime

log = logging.getLogger(__name__)
SMTP_TIMEOUT = 30


def compose(rt: Runtime, to: str, export_id: str, status: str, total: int, url: str | None) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = rt.settings.mail_from
    mail["To"] = to
    link = f"{rt.settings.public_base}/v1.1/messages/export/{export_id}/result"
    if status == "Success":
        mail["Subject"] = f"Your ThingCloud export {export_id} is ready"
        text = f"Your export of {total} messages is ready until it expires: {link}\n"
    else:
        mail["Subject"] = f"Your ThingCloud export {export_id} failed"
        text = f"Your export {export_id} could not be made. Please request it again.\n"
    if url:
        text += f"\n{url}\n"
    mail.set_content(text)
    return mail


def _send(smtp_url: str, mail: EmailMessage) -> None:
    parts = urlsplit(smtp_url)
    secure = parts.scheme == "smtps"
    host, port = parts.hostname or "localhost", parts.port or (465 if secure else 25)
    smtp = (
        smtplib.SMTP_SSL(host, port, timeout=SMTP_TIMEOUT)
        if secure
        else smtplib.SMTP(host, port, timeout=SMTP_TIMEOUT)
    )
    with smtp:
        if parts.username:
            smtp.login(unquote(parts.username), unquote(parts.password or ""))
        smtp.send_message(mail)


async def notify_export(
    rt: Runtime, export_id: str, uid: str | None, status: str, total: int, url: str | None
) -> None:
    """E-mail the requesting user (application and device requesters have no address: logged only)."""
    email = None
    if uid is not None:
        async with rt.db.read() as conn:
            email = (await conn.execute(select(t.users.c.email).where(t.users.c.id == uid))).scalar()
    if email is None or not rt.settings.smtp_url:
        log.info(
            "export %s %s (%d messages); e-mail to %s not sent: no SMTP configured",
            export_id,
            status,
            total,
            email or "nobody",
        )
        return
    try:
        await asyncio.to_thread(
            _send, rt.settings.smtp_url, compose(rt, email, export_id, status, total, url)
        )
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("export %s: e-mail to the requester failed: %s", export_id, type(exc).__name__)
