"""The audience-question flow through the real app, real sockets, real clients."""

from __future__ import annotations

from server.auth import Role


async def test_question_reaches_two_moderators(base_url, http, staff, listen):
    marie, paul = await staff("marie"), await staff("paul", Role.DIRECTOR)
    mods = [await listen(base_url, "/moderation", c.cookie_header()) for c in (marie, paul)]
    viewer = await http(base_url)

    status, body, _ = await viewer.request(
        "POST", "/api/questions",
        {"theme": "fair-price", "text": "Combien touche le producteur sur 1 € de café ?",
         "author": "Léa"})

    assert status == 201
    for mod in mods:
        pushed = await mod.next("question", within=2)
        assert pushed["id"] == body["id"]
        assert pushed["status"] == "pending"
        assert pushed["text"] == "Combien touche le producteur sur 1 € de café ?"
        assert "viewer_id" in pushed and "flags" in pushed
