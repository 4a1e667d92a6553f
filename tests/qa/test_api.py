"""The question API as viewers and moderators use it: real app, real socket, real clients."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
import socketio

from server.auth import Role

CONTRACT_FIELDS = {"id", "theme", "text", "author", "segment_id", "status", "starred",
                   "queue_position", "on_air", "votes", "merged_into", "flags", "note",
                   "created_at", "updated_at", "version"}
PRIVATE_FIELDS = {"flags", "note", "viewer_id"}


async def ask(viewer: Any, text: str, theme: str = "growth", **extra: Any) -> dict[str, Any]:
    status, body, _ = await viewer.request("POST", "/api/questions",
                                           {"theme": theme, "text": text, **extra})
    assert status == 201, body
    return dict(body)


async def read(client: Any, qid: int) -> dict[str, Any]:
    status, body, _ = await client.request("GET", f"/api/questions/{qid}")
    assert status == 200, body
    return dict(body)


async def change(mod: Any, qid: int, **fields: Any) -> dict[str, Any]:
    """PATCH on top of the version the moderator has just read."""
    version = (await read(mod, qid))["version"]
    status, body, _ = await mod.request("PATCH", f"/api/questions/{qid}",
                                        {**fields, "version": version})
    assert status == 200, body
    return dict(body)


async def public_list(viewer: Any, query: str = "") -> list[dict[str, Any]]:
    status, body, _ = await viewer.request("GET", f"/api/questions{query}")
    assert status == 200, body
    return list(body)


def is_question(qid: int) -> Any:
    return lambda pushed: pushed is not None and pushed["id"] == qid


async def test_approval_reaches_viewers_as_public_question(base_url, http, staff, listen):
    mod, viewer = await staff(), await http(base_url)
    audience = await listen(base_url, "/")
    q = await ask(viewer, "Qui fixe le prix minimum garanti ?", author="Léa")

    await change(mod, q["id"], status="approved", note="à poser après le duplex")

    pushed = await audience.next("question", within=2)
    assert pushed["id"] == q["id"]  # the pending question was never pushed to viewers
    assert pushed["status"] == "approved"
    assert pushed["text"] == "Qui fixe le prix minimum garanti ?"
    assert pushed["author"] == "Léa"
    assert not PRIVATE_FIELDS & pushed.keys()


async def test_rejecting_a_public_question_removes_it_for_viewers(base_url, http, staff, listen):
    mod, viewer = await staff(), await http(base_url)
    q = await ask(viewer, "Les labels se valent-ils tous ?")
    await change(mod, q["id"], status="approved")
    audience = await listen(base_url, "/")

    await change(mod, q["id"], status="rejected")

    assert await audience.next("question_removed", within=2) == {"id": q["id"]}
    assert [x["id"] for x in await public_list(viewer)] == []


@pytest.mark.parametrize("cookie", ["viewer", "forged", "none"])
async def test_moderation_namespace_refuses_non_staff(base_url, http, staff, listen, cookie):
    viewer = await http(base_url)
    await viewer.request("GET", "/api/themes")  # now holds a viewer cookie
    header = {"viewer": viewer.cookie_header(),
              "forged": "tv_session=" + "x" * 43,
              "none": ""}[cookie]

    with pytest.raises(socketio.exceptions.ConnectionError):
        await listen(base_url, "/moderation", header)

    # The same server lets a signed-in moderator in.
    mod = await staff()
    await listen(base_url, "/moderation", mod.cookie_header())


async def test_stale_edit_gets_409_with_current_and_keeps_first(base_url, http, staff):
    marie, paul = await staff("marie"), await staff("paul")
    q = await ask(await http(base_url), "Quel est le revenu d'un producteur de café ?")
    seen = (await read(paul, q["id"]))["version"]

    first = await change(marie, q["id"], text="Quel est le revenu moyen d'un caféiculteur ?")
    status, body, _ = await paul.request("PATCH", f"/api/questions/{q['id']}",
                                         {"status": "rejected", "version": seen})

    assert status == 409
    assert body["error"] == "stale_version" and body["message"]
    assert body["current"]["text"] == "Quel est le revenu moyen d'un caféiculteur ?"
    assert body["current"]["version"] == first["version"] == seen + 1
    assert body["text"] == body["current"]["text"]
    assert body["status"] == "pending" and body["version"] == first["version"]
    stored = await read(marie, q["id"])
    assert stored["text"] == "Quel est le revenu moyen d'un caféiculteur ?"
    assert stored["status"] == "pending"


async def test_votes_count_once_per_viewer(base_url, http, staff, listen):
    mod = await staff()
    alice, bruno = await http(base_url), await http(base_url)
    q = await ask(alice, "Le commerce équitable paie-t-il vraiment mieux ?")
    pending = await ask(bruno, "Et les distributeurs, combien prennent-ils ?")
    await change(mod, q["id"], status="approved")
    audience = await listen(base_url, "/")
    vote = f"/api/questions/{q['id']}/vote"

    assert (await alice.request("POST", vote))[:2] == (200, {"id": q["id"], "votes": 1,
                                                              "voted": True})
    status, body, _ = await alice.request("POST", vote)
    assert (status, body["votes"]) == (200, 1)
    status, body, _ = await bruno.request("POST", vote)
    assert (status, body["votes"]) == (200, 2)
    pushed = await audience.next("question", within=2, where=lambda x: x["votes"] == 2)
    assert pushed["id"] == q["id"]

    status, body, _ = await alice.request("DELETE", vote)
    assert (status, body["votes"]) == (200, 1)
    status, body, _ = await alice.request("DELETE", vote)  # nothing left to withdraw
    assert (status, body["votes"]) == (200, 1)
    listed = await public_list(bruno)
    assert [(x["id"], x["votes"], x["voted"]) for x in listed] == [(q["id"], 1, True)]

    status, body, _ = await alice.request("POST", f"/api/questions/{pending['id']}/vote")
    assert status == 404 and body["error"] == "question_not_found" and body["message"]
    assert (await read(mod, pending["id"]))["votes"] == 0


async def test_a_page_that_asks_for_batched_votes_gets_one_votes_push_not_a_question_each(
        base_url, http, staff, listen):
    mod = await staff()
    alice, bruno = await http(base_url), await http(base_url)
    first = await ask(alice, "Qui fixe le prix minimum garanti ?")
    second = await ask(bruno, "Combien gagne un producteur de cacao ?")
    for q in (first, second):
        await change(mod, q["id"], status="approved")
    batched = await listen(base_url, "/", auth={"votes": "batched"})
    each = await listen(base_url, "/")
    for viewer in (alice, bruno):
        for q in (first, second):
            status, _, _ = await viewer.request("POST", f"/api/questions/{q['id']}/vote")
            assert status == 200

    # The counts arrive in `votes` pushes (one a second at most), each at its
    # latest value then.
    latest: dict[int, int] = {}
    while latest != {first["id"]: 2, second["id"]: 2}:
        pushed = await batched.next("votes", within=3)
        assert all(set(c) == {"id", "votes"} for c in pushed["questions"])
        latest.update((c["id"], c["votes"]) for c in pushed["questions"])
    # The contract's original form still works for a client that did not ask.
    await each.next("question", within=3, where=lambda x: x["id"] == first["id"]
                    and x["votes"] == 2)
    await each.next("question", within=3, where=lambda x: x["id"] == second["id"]
                    and x["votes"] == 2)
    # Barrier: a text edit is a `question` push to everyone; the batched page
    # got no `question` push for the votes before it.
    await change(mod, first["id"], text="Qui fixe le prix minimum garanti, et comment ?")
    barrier = await batched.next("question", within=3)
    assert barrier["text"] == "Qui fixe le prix minimum garanti, et comment ?"
    assert batched.drain("question") == []


async def test_viewer_list_sorts_and_shows_own_votes(base_url, http, staff):
    mod = await staff()
    asker, a, b, c = [await http(base_url) for _ in range(4)]
    q1 = await ask(asker, "Première question : les coopératives ?", theme="cooperatives")
    q2 = await ask(asker, "Deuxième question : la croissance ?")
    q3 = await ask(asker, "Troisième question : le prix ?", theme="fair-price")
    hidden = await ask(asker, "Quatrième question, encore en attente ?")
    for q in (q1, q2, q3):
        await change(mod, q["id"], status="approved")
    for viewer, q in ((b, q1), (c, q1), (a, q3)):
        status, _, _ = await viewer.request("POST", f"/api/questions/{q['id']}/vote")
        assert status == 200

    popular = await public_list(a, "?sort=popular")
    recent = await public_list(a, "?sort=recent")

    assert [(x["id"], x["votes"]) for x in popular] == [(q1["id"], 2), (q3["id"], 1),
                                                        (q2["id"], 0)]
    assert [x["id"] for x in recent] == [q3["id"], q2["id"], q1["id"]]
    assert {x["id"]: x["voted"] for x in popular} == {q1["id"]: False, q2["id"]: False,
                                                      q3["id"]: True}
    assert {x["id"]: x["voted"] for x in await public_list(b)}[q1["id"]] is True
    assert hidden["id"] not in {x["id"] for x in recent}
    assert all(not PRIVATE_FIELDS & x.keys() for x in popular)
    by_theme = await public_list(a, "?theme=fair-price")
    assert [x["id"] for x in by_theme] == [q3["id"]]


async def test_mine_shows_own_questions_in_every_status(base_url, http, staff):
    mod = await staff()
    lea, tom = await http(base_url), await http(base_url)
    approved = await ask(lea, "Comment devenir producteur labellisé ?")
    rejected = await ask(lea, "Pourquoi le chocolat est-il si cher ?")
    pending = await ask(lea, "Combien de coopératives en Afrique ?")
    other = await ask(tom, "Qui contrôle les labels ?")
    await change(mod, approved["id"], status="approved")
    await change(mod, rejected["id"], status="rejected", note="hors sujet")

    status, mine, _ = await lea.request("GET", "/api/questions/mine")

    assert status == 200
    assert {x["id"]: x["status"] for x in mine} == {approved["id"]: "approved",
                                                    rejected["id"]: "rejected",
                                                    pending["id"]: "pending"}
    assert all(not PRIVATE_FIELDS & x.keys() for x in mine)
    status, theirs, _ = await tom.request("GET", "/api/questions/mine")
    assert [x["id"] for x in theirs] == [other["id"]]
    stranger = await http(base_url)
    assert (await stranger.request("GET", "/api/questions/mine"))[:2] == (200, [])


async def test_my_question_push_reaches_only_the_asker(base_url, http, staff, listen):
    mod = await staff()
    asker, other = await http(base_url), await http(base_url)
    for viewer in (asker, other):
        await viewer.request("GET", "/api/themes")  # receive a viewer cookie
    asker_socket = await listen(base_url, "/", asker.cookie_header())
    other_socket = await listen(base_url, "/", other.cookie_header())
    q = await ask(asker, "Les petits producteurs ont-ils accès au label ?")
    submitted = await asker_socket.next("my_question", within=2)
    assert (submitted["id"], submitted["status"]) == (q["id"], "pending")

    await change(mod, q["id"], status="approved")

    pushed = await asker_socket.next("my_question", within=2)
    assert (pushed["id"], pushed["status"]) == (q["id"], "approved")
    assert not PRIVATE_FIELDS & pushed.keys()
    # A later push to everyone: anything meant for the other socket came before it.
    await other_socket.next("question", within=2, where=is_question(q["id"]))
    status, _, _ = await mod.request("PUT", "/api/on-air", {"question_id": q["id"]})
    assert status == 200
    await other_socket.next("on_air", within=2, where=is_question(q["id"]))
    assert other_socket.drain("my_question") == []


async def test_merge_adds_distinct_voters_and_removes_duplicate(base_url, http, staff, listen):
    mod = await staff()
    a, b, c = [await http(base_url) for _ in range(3)]
    target = await ask(a, "Comment les coopératives fixent-elles leurs prix ?")
    dup = await ask(b, "Comment une coopérative fixe-t-elle son prix ?")
    for q in (target, dup):
        await change(mod, q["id"], status="approved")
    for viewer, q in ((a, target), (c, target), (a, dup), (b, dup)):
        status, _, _ = await viewer.request("POST", f"/api/questions/{q['id']}/vote")
        assert status == 200
    moderators = await listen(base_url, "/moderation", mod.cookie_header())
    audience = await listen(base_url, "/")

    status, body, _ = await mod.request("POST", f"/api/questions/{dup['id']}/merge",
                                        {"into": target["id"]})

    assert status == 200
    assert (body["id"], body["votes"]) == (target["id"], 3)  # a, b and c; a counted once
    assert await moderators.next("question_removed", within=2) == {"id": dup["id"]}
    assert await audience.next("question_removed", within=2) == {"id": dup["id"]}
    listed = await public_list(b)
    assert [(x["id"], x["votes"], x["voted"]) for x in listed] == [(target["id"], 3, True)]
    status, staff_list, _ = await mod.request("GET", "/api/questions")
    assert [x["id"] for x in staff_list] == [target["id"]]
    assert (await read(mod, dup["id"]))["merged_into"] == target["id"]
    status, body, _ = await c.request("POST", f"/api/questions/{dup['id']}/vote")
    assert (status, body["error"]) == (404, "question_not_found")


async def test_on_air_put_replace_push_and_clear(base_url, http, staff, listen):
    mod, viewer = await staff(), await http(base_url)
    first = await ask(viewer, "Le prix juste existe-t-il ?", theme="fair-price")
    second = await ask(viewer, "Qui paie la certification ?", theme="fair-price")
    for q in (first, second):
        await change(mod, q["id"], status="approved")
    audience = await listen(base_url, "/")
    moderators = await listen(base_url, "/moderation", mod.cookie_header())

    status, body, _ = await mod.request("PUT", "/api/on-air", {"question_id": first["id"]})
    assert status == 200 and body["id"] == first["id"] and body["on_air"] is True
    seen = await audience.next("on_air", within=2, where=is_question(first["id"]))
    assert seen["on_air"] is True and not PRIVATE_FIELDS & seen.keys()
    staff_seen = await moderators.next("on_air", within=2, where=is_question(first["id"]))
    assert "flags" in staff_seen
    status, body, _ = await viewer.request("GET", "/api/on-air")
    assert (status, body["id"], body["text"]) == (200, first["id"], "Le prix juste existe-t-il ?")

    status, body, _ = await mod.request("PUT", "/api/on-air", {"question_id": second["id"]})
    assert status == 200 and body["id"] == second["id"]
    await audience.next("on_air", within=2, where=is_question(second["id"]))
    await moderators.next("on_air", within=2, where=is_question(second["id"]))
    assert (await read(mod, first["id"]))["on_air"] is False
    assert (await viewer.request("GET", "/api/on-air"))[1]["id"] == second["id"]
    late = await listen(base_url, "/")  # a viewer arriving now sees what is on air at once
    assert (await late.next("on_air", within=2))["id"] == second["id"]
    status, staff_list, _ = await mod.request("GET", "/api/questions")
    assert [x["id"] for x in staff_list if x["on_air"]] == [second["id"]]

    status, body, _ = await mod.request("DELETE", "/api/on-air")
    assert (status, body) == (200, None)
    # The connect-time null was consumed above, so this one is the clearing.
    assert await audience.next("on_air", within=2, where=lambda x: x is None) is None
    assert await moderators.next("on_air", within=2, where=lambda x: x is None) is None
    assert (await viewer.request("GET", "/api/on-air"))[:2] == (200, None)
    assert (await read(mod, second["id"]))["on_air"] is False


async def test_rejected_question_cannot_go_on_air(base_url, http, staff):
    mod = await staff()
    q = await ask(await http(base_url), "Une question qui sera refusée ?")
    await change(mod, q["id"], status="rejected")

    status, body, _ = await mod.request("PUT", "/api/on-air", {"question_id": q["id"]})

    assert status == 409 and body["error"] == "not_publishable" and body["message"]
    assert (await mod.request("GET", "/api/on-air"))[:2] == (200, None)
    assert (await read(mod, q["id"]))["on_air"] is False


async def test_rejecting_the_question_on_air_takes_it_off_air(base_url, http, staff, listen):
    mod = await staff()
    q = await ask(await http(base_url), "Une question qui passe puis qu'on retire ?")
    await change(mod, q["id"], status="approved")
    status, _, _ = await mod.request("PUT", "/api/on-air", {"question_id": q["id"]})
    assert status == 200
    audience = await listen(base_url, "/")
    await audience.next("on_air", within=2, where=is_question(q["id"]))

    await change(mod, q["id"], status="rejected")

    assert await audience.next("on_air", within=2) is None
    assert await audience.next("question_removed", within=2) == {"id": q["id"]}
    assert (await mod.request("GET", "/api/on-air"))[:2] == (200, None)


async def test_starring_builds_an_ordered_queue(base_url, http, staff):
    mod, viewer = await staff(), await http(base_url)
    q1, q2, q3 = [await ask(viewer, f"Question numéro {n} pour la file ?") for n in (1, 2, 3)]

    positions = [(await change(mod, q["id"], starred=True))["queue_position"]
                 for q in (q1, q2, q3)]
    assert positions == [1, 2, 3]

    moved = await change(mod, q3["id"], queue_position=1)
    assert (moved["starred"], moved["queue_position"]) == (True, 1)
    assert [(await read(mod, q["id"]))["queue_position"] for q in (q1, q2)] == [2, 3]

    unstarred = await change(mod, q1["id"], starred=False)
    assert (unstarred["starred"], unstarred["queue_position"]) == (False, None)
    assert [(await read(mod, q["id"]))["queue_position"] for q in (q3, q2)] == [1, 2]


async def test_export_csv_has_every_field_of_every_question(base_url, http, staff):
    mod = await staff()
    a, b = await http(base_url), await http(base_url)
    approved = await ask(a, "Comment rémunérer équitablement, même en 2027 ?", author="Zoé")
    rejected = await ask(a, "Question hors sujet ?", theme="cooperatives")
    pending = await ask(b, "Quel « juste prix » pour le cacao ?\nEt pour le café ?",
                        theme="fair-price")
    merged = await ask(b, "Comment rémunérer équitablement en 2027 ?")
    await change(mod, approved["id"], status="approved", note="bonne question")
    await change(mod, rejected["id"], status="rejected")
    status, _, _ = await mod.request("POST", f"/api/questions/{merged['id']}/merge",
                                     {"into": approved["id"]})
    assert status == 200

    status, body, resp = await mod.request("GET", "/api/questions/export.csv")

    assert status == 200 and resp.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"))))
    ids = [approved["id"], rejected["id"], pending["id"], merged["id"]]
    assert sorted(int(r["id"]) for r in rows) == sorted(ids)
    assert CONTRACT_FIELDS | {"viewer_id"} <= set(rows[0])
    for row in rows:
        full = await read(mod, int(row["id"]))
        for key in ("theme", "text", "status", "created_at", "updated_at"):
            assert row[key] == full[key], key
        assert row["author"] == (full["author"] or "")
        assert row["note"] == (full["note"] or "")
        assert row["viewer_id"] == full["viewer_id"]
        assert int(row["votes"]) == full["votes"] and int(row["version"]) == full["version"]
        assert row["merged_into"] == str(full["merged_into"] or "")
    by_id = {int(r["id"]): r for r in rows}
    assert by_id[merged["id"]]["merged_into"] == str(approved["id"])
    assert by_id[approved["id"]]["note"] == "bonne question"

    status, body, _ = await a.request("GET", "/api/questions/export.csv")
    assert status == 401 and body["error"] == "not_authenticated" and body["message"]


async def test_profanity_and_duplicate_flags(base_url, http, staff, listen):
    mod = await staff()
    moderators = await listen(base_url, "/moderation", mod.cookie_header())
    viewers = [await http(base_url) for _ in range(5)]
    rude_fr = await ask(viewers[0], "C'est quoi ce putain de prix ?", theme="cooperatives")
    rude_en = await ask(viewers[0], "Why the fuck is coffee so cheap?", theme="cooperatives")
    original = await ask(viewers[1], "Comment les coopératives fixent-elles le prix du cacao ?")
    again = await ask(viewers[2], "Comment les coopératives fixent elles le prix du cacao?")
    elsewhere = await ask(viewers[3], "Comment les coopératives fixent-elles le prix du cacao ?",
                          theme="fair-price")

    pushed = await moderators.next("question", within=2, where=is_question(rude_fr["id"]))
    assert "profanity" in pushed["flags"]
    assert "profanity" in (await read(mod, rude_en["id"]))["flags"]
    assert (await read(mod, original["id"]))["flags"] == []
    assert (await read(mod, again["id"]))["flags"] == [f"duplicate:{original['id']}"]
    assert (await read(mod, elsewhere["id"]))["flags"] == []
    # Flagged, never dropped: both are waiting for a moderator.
    status, listed, _ = await mod.request("GET", "/api/questions?status=pending")
    assert status == 200
    assert {rude_fr["id"], rude_en["id"]} <= {x["id"] for x in listed}


async def test_staff_text_edit_is_what_viewers_see(base_url, http, staff, listen):
    mod, viewer = await staff(Role.DIRECTOR.value, Role.DIRECTOR), await http(base_url)
    q = await ask(viewer, "pourquoi le caffé équitable est plus cher")
    await change(mod, q["id"], status="approved")
    audience = await listen(base_url, "/")

    await change(mod, q["id"], text="Pourquoi le café équitable est-il plus cher ?")

    pushed = await audience.next("question", within=2, where=is_question(q["id"]))
    assert pushed["text"] == "Pourquoi le café équitable est-il plus cher ?"
    assert [x["text"] for x in await public_list(viewer)] == [
        "Pourquoi le café équitable est-il plus cher ?"]
    assert (await read(viewer, q["id"]))["text"] == "Pourquoi le café équitable est-il plus cher ?"


async def test_moderator_files_a_question_under_a_segment_of_the_running_order(
        base_url, http, staff, listen):
    mod = await staff()
    console = await listen(base_url, "/moderation", mod.cookie_header())
    q = await ask(await http(base_url), "Quelle prime de développement reçoit la coopérative ?",
                  theme="cooperatives", segment_id="debat-cooperatives")
    assert q["segment_id"] == "debat-cooperatives"

    moved = await change(mod, q["id"], segment_id="duplex-afrique")
    pushed = await console.next(
        "question", within=2,
        where=lambda p: p["id"] == q["id"] and p["version"] == moved["version"])
    assert pushed["segment_id"] == "duplex-afrique"

    status, body, _ = await mod.request("PATCH", f"/api/questions/{q['id']}",
                                        {"segment_id": "duplex-lune", "version": moved["version"]})
    assert status == 422 and body["error"] == "segment_invalid" and body["field"] == "segment_id"
    assert (await read(mod, q["id"]))["segment_id"] == "duplex-afrique"
