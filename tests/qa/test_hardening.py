"""Hostile viewers cannot cost others their questions, nor stuff votes (issue 8, defects 1, 5)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer
from sqlalchemy import text

from server import keys
from tests.conftest import StartServer
from tests.helpers import Http
from tests.helpers import test_settings as settings_for

OpenHttp = Callable[..., Awaitable[Http]]
GENEROUS = {"rate_per_ip": {"count": 1000, "window_s": 600}}


async def _start(start_server: StartServer, tmp_path: Path, database_url: str,
                 **sections: dict[str, Any]) -> tuple[TestServer, str]:
    server = await start_server(settings_for(tmp_path, database_url=database_url, **sections))
    return server, str(server.make_url("")).rstrip("/")


async def test_a_lone_surrogate_costs_nobody_else_their_question(
        database_url: str, tmp_path: Path, start_server: StartServer, http: OpenHttp) -> None:
    server, base = await _start(start_server, tmp_path, database_url, qa=GENEROUS)
    viewers = [await http(base) for _ in range(90)]
    poisoned = {7, 40, 83}

    def body(n: int) -> dict[str, str]:
        # aiohttp writes the lone surrogate as the JSON escape "\ud800", as an attacker would.
        text_ = f"Question {n} : qui fixe le prix ?" + ("\ud800" if n in poisoned else "")
        return {"theme": "fair-price", "text": text_}

    async with asyncio.timeout(30):
        answers = await asyncio.gather(*(v.request("POST", "/api/questions", body(n))
                                         for n, v in enumerate(viewers)))

    for n, (status, reply, _) in enumerate(answers):
        if n in poisoned:
            assert (status, reply["error"], reply["field"]) == (422, "invalid_unicode", "text")
            assert reply["message"]
        else:
            assert status == 201, (n, reply)
    stored = await server.app[keys.QUESTIONS].export()
    assert sorted(q.text for q in stored) == sorted(
        body(n)["text"] for n in range(90) if n not in poisoned)


async def test_a_row_the_database_refuses_fails_alone(
        database_url: str, tmp_path: Path, start_server: StartServer, http: OpenHttp) -> None:
    """Whatever a future input trips in the database, its batch mates are stored."""
    server, base = await _start(start_server, tmp_path, database_url, qa=GENEROUS)
    # The database refuses one row, as it might for a reason nobody foresaw.
    async with server.app[keys.ENGINE].begin() as conn:
        if conn.dialect.name == "sqlite":
            await conn.execute(text(
                "CREATE TRIGGER refuse BEFORE INSERT ON questions WHEN NEW.text LIKE '%poison%' "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"))
        else:
            await conn.execute(text(
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                "IF NEW.text LIKE '%poison%' THEN RAISE EXCEPTION 'refused by the test'; END IF;"
                " RETURN NEW; END $$ LANGUAGE plpgsql"))
            await conn.execute(text("CREATE TRIGGER refuse BEFORE INSERT ON questions "
                                    "FOR EACH ROW EXECUTE FUNCTION refuse()"))
    viewers = [await http(base) for _ in range(60)]

    async with asyncio.timeout(30):
        answers = await asyncio.gather(*(
            v.request("POST", "/api/questions",
                      {"theme": "growth",
                       "text": f"Question {n}" + (" poison" if n % 20 == 3 else "")})
            for n, v in enumerate(viewers)))

    refused = [n for n, (status, _, _) in enumerate(answers) if status != 201]
    assert refused == [3, 23, 43], answers
    assert {answers[n][0] for n in refused} == {422}
    assert {answers[n][1]["error"] for n in refused} == {"question_not_stored"}
    stored = await server.app[keys.QUESTIONS].export()
    assert len(stored) == 57
    assert {q.id for q in stored} == {b["id"] for s, b, _ in answers if s == 201}


async def test_votes_from_another_site_are_refused(base_url: str, http: OpenHttp,
                                                   staff: Callable[..., Awaitable[Http]]) -> None:
    mod, asker = await staff(), await http(base_url)
    _, q, _ = await asker.request("POST", "/api/questions",
                                  {"theme": "growth", "text": "Les labels sont-ils fiables ?"})
    version = q["version"]
    status, _, _ = await mod.request("PATCH", f"/api/questions/{q['id']}",
                                     {"status": "approved", "version": version})
    assert status == 200
    path = f"/api/questions/{q['id']}/vote"

    # A page elsewhere makes its visitor's browser post: a form, or fetch without CORS.
    for headers in ({"Origin": "https://evil.example"},
                    {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}):
        visitor = await http(base_url)
        status, body, resp = await visitor.request("POST", path, headers=headers)
        assert (status, body["error"]) == (403, "cross_origin"), headers
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    # The same site's own page is welcome.
    status, body, _ = await (await http(base_url)).request(
        "POST", path, headers={"Origin": base_url, "Sec-Fetch-Site": "same-origin"})
    assert (status, body["votes"]) == (200, 1)
    # A question from another site's page is refused too, and nothing is stored.
    status, body, _ = await (await http(base_url)).request(
        "POST", "/api/questions", {"theme": "growth", "text": "Posée depuis ailleurs"},
        headers={"Origin": "https://evil.example"})
    assert (status, body["error"]) == (403, "cross_origin")
    status, listed, _ = await mod.request("GET", "/api/questions")
    assert [x["text"] for x in listed] == ["Les labels sont-ils fiables ?"]


async def test_fresh_cookies_from_one_address_cannot_stuff_votes(
        tmp_path: Path, start_server: StartServer, http: OpenHttp) -> None:
    settings = settings_for(tmp_path, qa={"votes_per_ip_question": {"count": 40,
                                                                   "window_s": 3600}})
    server = await start_server(settings)
    base = str(server.make_url("")).rstrip("/")
    _, q, _ = await (await http(base)).request(
        "POST", "/api/questions", {"theme": "growth", "text": "Qui paie la certification ?"})
    async with server.app[keys.ENGINE].begin() as conn:
        await conn.execute(text("UPDATE questions SET status = 'approved'"))

    async def vote_as_a_new_viewer() -> int:
        client = await http(base)  # no cookie: the server mints a new viewer id
        status, _, _ = await client.request("POST", f"/api/questions/{q['id']}/vote")
        return status

    statuses = await asyncio.gather(*(vote_as_a_new_viewer() for _ in range(150)))

    assert statuses.count(200) == 40 and statuses.count(429) == 110
    status, shown, _ = await (await http(base)).request("GET", f"/api/questions/{q['id']}")
    assert (status, shown["votes"]) == (200, 40)
