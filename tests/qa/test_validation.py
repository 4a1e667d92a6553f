"""Bad input of every kind: its status, the error shape, and nothing stored is lost."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from tests import helpers
from tests.helpers import Http

FIRST = "Comment les producteurs accèdent-ils au marché européen ?"
SECOND = "Première ligne de la question\nEt une deuxième ligne ?"


def assert_error(status: int, body: Any, expected_status: int, code: str) -> str:
    """The contract's error shape with a readable sentence; returns the message."""
    assert status == expected_status, body
    assert isinstance(body, dict) and set(body) >= {"error", "message"}, body
    assert body["error"] == code
    message = body["message"]
    assert isinstance(message, str) and len(message) > 10
    assert " " in message.strip() and message.rstrip()[-1] in ".!?", message
    assert "{" not in message and code not in message, message
    return message


@dataclass
class Archive:
    """Questions stored before the bad input arrives, as their asker (and staff) saw them."""

    asker: Http
    mine: list[dict[str, Any]]
    mod: Http | None = None
    staff_view: list[dict[str, Any]] | None = None

    async def intact(self) -> None:
        status, mine, _ = await self.asker.request("GET", "/api/questions/mine")
        assert status == 200
        assert sorted(mine, key=lambda q: q["id"]) == self.mine
        if self.mod is not None:
            status, listed, _ = await self.mod.request("GET", "/api/questions")
            by_id = {q["id"]: q for q in listed}
            assert [by_id.get(q["id"]) for q in self.staff_view or []] == self.staff_view
            status, public, _ = await self.asker.request("GET", "/api/questions")
            assert [(q["id"], q["text"]) for q in public] == [(self.mine[0]["id"], FIRST)]


async def _asked(base_url: str, http: Any) -> Archive:
    asker = await http(base_url)
    for theme, text in (("cooperatives", FIRST), ("growth", SECOND)):
        status, body, _ = await asker.request(
            "POST", "/api/questions", {"theme": theme, "text": text, "author": "Awa"})
        assert status == 201, body
    status, mine, _ = await asker.request("GET", "/api/questions/mine")
    assert [q["text"] for q in sorted(mine, key=lambda q: q["id"])] == [FIRST, SECOND]
    return Archive(asker, sorted(mine, key=lambda q: q["id"]))


@pytest.fixture
async def archive(base_url, http) -> Archive:
    """Two pending questions (staff accounts are slow to make: none here)."""
    return await _asked(base_url, http)


@pytest.fixture
async def moderated(base_url, http, staff) -> Archive:
    """The same, with the first one approved by a signed-in moderator."""
    archive = await _asked(base_url, http)
    mod = await staff()
    first = archive.mine[0]
    status, _, _ = await mod.request("PATCH", f"/api/questions/{first['id']}",
                                     {"status": "approved", "version": first["version"]})
    assert status == 200
    status, mine, _ = await archive.asker.request("GET", "/api/questions/mine")
    archive.mine = sorted(mine, key=lambda q: q["id"])
    archive.mod = mod
    archive.staff_view = [(await mod.request("GET", f"/api/questions/{q['id']}"))[1]
                          for q in archive.mine]
    return archive


VALID = {"theme": "growth", "text": "Une question tout à fait correcte ?"}

CONTROL = "text_control_characters"
AUTHOR_CONTROL = "author_control_characters"

# Grouped by field, one server each: (case, body, error code).
BAD_QUESTIONS = {
    "theme": [
        ("unknown theme", {**VALID, "theme": "sport"}, "unknown_theme"),
        ("missing theme", {"text": VALID["text"]}, "unknown_theme"),
        ("theme not a string", {**VALID, "theme": ["growth"]}, "unknown_theme"),
    ],
    "text": [
        ("missing text", {"theme": "growth"}, "text_required"),
        ("empty text", {**VALID, "text": ""}, "text_required"),
        ("whitespace text", {**VALID, "text": "  \n\t \u00a0 "}, "text_required"),
        ("text not a string", {**VALID, "text": 42}, "text_required"),
        ("text of 501 characters", {**VALID, "text": "é" * 501}, "text_too_long"),
    ],
    "text control characters": [
        ("NUL in text", {**VALID, "text": "Une question\x00 cachée ?"}, CONTROL),
        ("BEL in text", {**VALID, "text": "Une question\x07 ?"}, CONTROL),
        ("RLO in text", {**VALID, "text": "Une question \u202e?emrof"}, CONTROL),
    ],
    "author": [
        ("author of 61 characters", {**VALID, "author": "A" * 61}, "author_too_long"),
        ("author not a string", {**VALID, "author": {"name": "Awa"}}, "author_invalid"),
        ("NUL in author", {**VALID, "author": "Awa\x00"}, AUTHOR_CONTROL),
        ("BEL in author", {**VALID, "author": "A\x07wa"}, AUTHOR_CONTROL),
        ("RLO in author", {**VALID, "author": "\u202eawA"}, AUTHOR_CONTROL),
        ("newline in author", {**VALID, "author": "Awa\nDiallo"}, AUTHOR_CONTROL),
    ],
    "segment": [
        ("bad segment id", {**VALID, "segment_id": "../etc/passwd"}, "segment_invalid"),
        ("segment not in the running order", {**VALID, "segment_id": "duplex-lune"},
         "segment_invalid"),
    ],
}


@pytest.mark.parametrize("field", BAD_QUESTIONS)
async def test_bad_question_is_422_and_loses_nothing(archive, base_url, http, field):
    viewer = await http(base_url)
    for case, body, code in BAD_QUESTIONS[field]:
        status, answer, _ = await viewer.request("POST", "/api/questions", body)
        assert (status, answer.get("error")) == (422, code), case
        assert_error(status, answer, 422, code)
    assert (await viewer.request("GET", "/api/questions/mine"))[1] == []
    await archive.intact()


async def test_limits_are_inclusive_and_newlines_kept(archive, base_url, http):
    viewer = await http(base_url)
    for body in ({**VALID, "text": "é" * 500}, {**VALID, "author": "A" * 60},
                 {**VALID, "text": "Ligne un\nLigne deux\n\tLigne trois ?"}):
        status, answer, _ = await viewer.request("POST", "/api/questions", body)
        assert status == 201, answer
        assert answer["text"] == body["text"] and answer.get("author") == body.get("author")
    await archive.intact()


RAW_BODIES = {
    "form encoded": (b"theme=growth&text=Bonjour", "application/x-www-form-urlencoded",
                     415, "unsupported_media_type"),
    "plain text": (b'{"theme": "growth", "text": "Bonjour ?"}', "text/plain",
                   415, "unsupported_media_type"),
    "truncated JSON": (b'{"theme": "growth", "text": ', "application/json", 400, "invalid_json"),
    "not UTF-8": (b'{"theme": "growth", "text": "\xff\xfe"}', "application/json",
                  400, "invalid_json"),
    "JSON array": (json.dumps([VALID]).encode(), "application/json", 400, "invalid_json"),
    "JSON string": (b'"growth"', "application/json", 400, "invalid_json"),
    "JSON null": (b"null", "application/json", 400, "invalid_json"),
    "over 256 KiB": (json.dumps({**VALID, "text": "x" * 300_000}).encode(), "application/json",
                     413, "request_too_large"),
}


async def test_unreadable_bodies_are_rejected_and_lose_nothing(archive, base_url, http):
    viewer = await http(base_url)
    for case, (data, content_type, expected, code) in RAW_BODIES.items():
        status, answer, _ = await viewer.request("POST", "/api/questions", data=data,
                                                 headers={"Content-Type": content_type})
        assert (status, answer.get("error")) == (expected, code), case
        assert_error(status, answer, expected, code)
    assert (await viewer.request("GET", "/api/questions/mine"))[1] == []
    await archive.intact()


# (request, status, error code, a word of the French sentence, a word of the English one)
LANGUAGE_CASES = {
    "unknown theme": (("POST", "/api/questions", {**VALID, "theme": "x"}), 422,
                      "unknown_theme", "thème", "theme"),
    "too long": (("POST", "/api/questions", {**VALID, "text": "x" * 501}), 422,
                 "text_too_long", "trop longue", "too long"),
    "bad JSON": (("POST", "/api/questions", [1]), 400, "invalid_json", "objet JSON",
                 "JSON object"),
    "unknown route": (("GET", "/api/nowhere", None), 404, "not_found", "n'existe pas",
                      "does not exist"),
}


@pytest.mark.parametrize("case", LANGUAGE_CASES)
async def test_errors_speak_french_by_default_and_english_on_request(base_url, http, case):
    (method, path, body), expected, code, french, english = LANGUAGE_CASES[case]
    viewer = await http(base_url)
    sep = "&" if "?" in path else "?"

    fr = assert_error(*(await viewer.request(method, path, body))[:2], expected, code)
    status, en_header, _ = await viewer.request(method, path, body,
                                                headers={"Accept-Language": "en-GB,en;q=0.9"})
    assert_error(status, en_header, expected, code)
    en_query = (await viewer.request(method, f"{path}{sep}lang=en", body))[1]
    fr_header = (await (await http(base_url)).request(
        method, path, body, headers={"Accept-Language": "fr-FR,fr;q=0.9,en;q=0.5"}))[1]

    assert french in fr and english not in fr
    assert english in en_header["message"] and french not in en_header["message"]
    assert en_query["message"] == en_header["message"] and en_query["error"] == code
    assert fr_header["message"] == fr
    if code == "text_too_long":
        assert "500" in fr and "500" in en_header["message"]


async def test_patch_errors(moderated):
    mod, target = moderated.mod, moderated.staff_view[1]
    path = f"/api/questions/{target['id']}"
    version = target["version"]
    cases = [
        ({"status": "approved"}, "version_required"),
        ({"status": "approved", "version": str(version)}, "version_required"),
        ({"votes": 1000, "version": version}, "unknown_field"),
        ({"status": "published", "version": version}, "status_invalid"),
        ({"starred": "yes", "version": version}, "starred_invalid"),
        ({"queue_position": 0, "version": version}, "queue_position_invalid"),
        ({"text": "   ", "version": version}, "text_required"),
        ({"text": "x" * 501, "version": version}, "text_too_long"),
    ]
    for body, code in cases:
        status, answer, _ = await mod.request("PATCH", path, body)
        assert_error(status, answer, 422, code)
    await moderated.intact()


async def test_sixth_question_in_window_is_429_and_first_five_kept(moderated, base_url, http):
    viewer = await http(base_url)
    asked = []
    for n in range(1, 6):
        status, body, _ = await viewer.request(
            "POST", "/api/questions", {**VALID, "text": f"Question numéro {n} de la série ?"})
        assert status == 201, body
        asked.append(body["id"])

    status, body, resp = await viewer.request(
        "POST", "/api/questions", {**VALID, "text": "Une sixième question ?"})

    assert_error(status, body, 429, "rate_limited")
    retry_after = resp.headers["Retry-After"]
    assert retry_after.isdigit() and 0 < int(retry_after) <= 600
    status, mine, _ = await viewer.request("GET", "/api/questions/mine")
    assert sorted(q["id"] for q in mine) == sorted(asked)
    assert "Une sixième question ?" not in {q["text"] for q in mine}
    status, listed, _ = await moderated.mod.request("GET", "/api/questions")
    assert set(asked) <= {q["id"] for q in listed}
    # Another viewer is not held back by this one.
    status, _, _ = await (await http(base_url)).request("POST", "/api/questions", VALID)
    assert status == 201
    await moderated.intact()


async def test_invalid_input_does_not_use_up_the_rate_limit(archive, base_url, http):
    viewer = await http(base_url)
    for _ in range(6):
        status, _, _ = await viewer.request("POST", "/api/questions", {**VALID, "text": ""})
        assert status == 422
        status, _, _ = await viewer.request("POST", "/api/questions", data=b"[",
                                            headers={"Content-Type": "application/json"})
        assert status == 400
    for n in range(5):
        status, body, _ = await viewer.request(
            "POST", "/api/questions", {**VALID, "text": f"Question valide numéro {n} ?"})
        assert status == 201, body
    await archive.intact()


async def test_per_address_limit_with_forwarded_for(start_server, http, tmp_path):
    server = await start_server(helpers.test_settings(
        tmp_path, http={"trust_forwarded": True},
        qa={"rate_per_ip": {"count": 3, "window_s": 600}}))
    base = str(server.make_url("")).rstrip("/")
    office = [await http(base, forwarded_for="203.0.113.7") for _ in range(4)]
    asked = []
    for n, viewer in enumerate(office[:3]):
        status, body, _ = await viewer.request(
            "POST", "/api/questions", {**VALID, "text": f"Question du bureau numéro {n} ?"})
        assert status == 201, body
        asked.append(body["id"])

    status, body, resp = await office[3].request("POST", "/api/questions", VALID)
    assert_error(status, body, 429, "rate_limited")
    assert resp.headers["Retry-After"].isdigit() and int(resp.headers["Retry-After"]) > 0
    status, _, _ = await office[0].request("POST", "/api/questions", VALID)
    assert status == 429

    elsewhere = await http(base, forwarded_for="198.51.100.23")
    status, body, _ = await elsewhere.request("POST", "/api/questions", VALID)
    assert status == 201, body
    for viewer, qid in zip(office, asked, strict=False):
        assert [q["id"] for q in (await viewer.request("GET", "/api/questions/mine"))[1]] == [qid]
    assert (await office[3].request("GET", "/api/questions/mine"))[1] == []


async def test_unknown_route_is_json_404(archive, base_url, http):
    viewer = await http(base_url)
    for path in ("/api/nowhere", "/api/questions/12/nothing", "/no-such-page"):
        status, body, resp = await viewer.request("GET", path)
        assert resp.content_type == "application/json"
        assert_error(status, body, 404, "not_found")
    status, body, _ = await viewer.request("DELETE", "/api/themes")
    assert_error(status, body, 405, "method_not_allowed")
    await archive.intact()


async def test_bad_question_id_is_404(moderated, base_url, http):
    viewer = await http(base_url)
    for qid in ("abc", "1.5", "-1", "0", "99999", "99999999999999999999"):
        for method, path in (("GET", f"/api/questions/{qid}"),
                             ("POST", f"/api/questions/{qid}/vote"),
                             ("DELETE", f"/api/questions/{qid}/vote")):
            status, body, _ = await viewer.request(method, path)
            assert_error(status, body, 404, "question_not_found")
        for method, path, body in (
                ("GET", f"/api/questions/{qid}", None),
                ("PATCH", f"/api/questions/{qid}", {"status": "approved", "version": 1}),
                ("POST", f"/api/questions/{qid}/merge", {"into": moderated.mine[0]["id"]})):
            status, answer, _ = await moderated.mod.request(method, path, body)
            assert_error(status, answer, 404, "question_not_found")
    await moderated.intact()


async def test_bad_question_ids_in_staff_bodies(moderated):
    mod, (first, second) = moderated.mod, moderated.mine
    merge = f"/api/questions/{second['id']}/merge"
    cases = [
        ("POST", merge, {}, 422, "merge_target_required"),
        ("POST", merge, {"into": str(first["id"])}, 422, "merge_target_required"),
        ("POST", merge, {"into": 99999}, 404, "question_not_found"),
        ("POST", merge, {"into": 10**20}, 404, "question_not_found"),
        ("POST", merge, {"into": second["id"]}, 409, "cannot_merge"),
        ("PUT", "/api/on-air", {"question_id": "abc"}, 422, "question_id_required"),
        ("PUT", "/api/on-air", {"question_id": True}, 422, "question_id_required"),
        ("PUT", "/api/on-air", {"question_id": 99999}, 404, "question_not_found"),
        ("PUT", "/api/on-air", {"question_id": 10**20}, 404, "question_not_found"),
    ]
    for method, path, body, expected, code in cases:
        status, answer, _ = await mod.request(method, path, body)
        assert_error(status, answer, expected, code)
    assert (await mod.request("GET", "/api/on-air"))[:2] == (200, None)
    await moderated.intact()
