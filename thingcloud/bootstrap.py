"""First start: on an empty database, create the administrator and the first-party console app.

What a newcomer needs to sign in is printed once, on standard output (never to the logs, which must
not carry a password), and also kept in ``<data_dir>/first-start.txt`` readable by the owner only.
"""

from __future__ import annotations

import secrets
import textwrap

from thingcloud.areas.users import service as users
from thingcloud.auth import applications as apps
from thingcloud.errors import Conflict
from thingcloud.runtime import Runtime


async def first_start(rt: Runtime) -> str | None:
    """Create the initial accounts if there are no users yet; return the text to show, once."""
    if await users.count_users(rt) > 0:
        return None
    settings = rt.settings
    password = settings.admin_password or secrets.token_urlsafe(12)
    shown_password = "(as set in THINGCLOUD_ADMIN_PASSWORD)" if settings.admin_password else password
    try:
        admin = await users.create_user(
            rt, settings.admin_email, password, name="admin", full_name="Administrator", is_admin=True
        )
    except Conflict:  # another node got there first
        return None
    base = settings.public_base
    console, secret = await apps.create_application(
        rt,
        apps.CONSOLE_NAME,
        admin.id,
        [f"{base}/oauth/callback"],
        password_grant=True,
        first_party=True,
    )
    text = textwrap.dedent(
        f"""
        ThingCloud is ready. This is shown once (also saved in {settings.data_dir / "first-start.txt"}).

          Administrator   {admin.email}
          Password        {shown_password}
          Console app     client_id {console.id}
                          client_secret {secret}

          Sign in:        {base}/authorize?client_id={console.id}&response_type=code
          Get a token:    curl -s -X POST {base}/token -d grant_type=password \\
                            -d client_id={console.id} -d username={admin.email} -d password=PASSWORD
          Use it:         curl -s -H "Authorization: Bearer TOKEN" {base}/v1.1/users/self
        """
    )
    path = settings.data_dir / "first-start.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)  # also when a leftover file with wider permissions was there
    path.write_text(text)
    return text
