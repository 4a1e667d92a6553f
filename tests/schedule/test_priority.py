"""The programme never waits for the audience's database connections (issue 9, point 1)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from server import keys
from server.auth import Role
from tests.conftest import StartServer, add_staff
from tests.helpers import Http, hold_every_connection
from tests.helpers import test_settings as settings_for

OpenHttp = Callable[..., Awaitable[Http]]


async def test_a_take_is_applied_while_the_audience_holds_every_connection(
        database_url: str, tmp_path: Path, start_server: StartServer, http: OpenHttp) -> None:
    server = await start_server(settings_for(tmp_path, database_url=database_url))
    base = str(server.make_url("")).rstrip("/")
    await add_staff(server.app, "chef", Role.DIRECTOR)
    director = await http(base)
    await director.sign_in("chef")
    status, before, _ = await director.request("POST", "/api/programme/start")
    assert status == 200

    async with contextlib.AsyncExitStack() as stack:
        held = await hold_every_connection(server.app[keys.ENGINE], stack)
        assert held >= 5

        # A director who opens the control room now, and takes the next segment.
        late = await http(base)
        started = time.monotonic()
        await late.sign_in("chef")
        status, after, _ = await late.request("POST", "/api/programme/take")
        took = time.monotonic() - started

        assert status == 200, after
        assert after["on_air"] == before["next"] != before["on_air"]
        # Generous for a loaded CI machine; the old shared pool made this wait 30 s.
        assert took < 5, took
