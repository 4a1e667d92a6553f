"""The question store on a real database: each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from qa.model import Question, Status, viewer_view
from qa.store import NewQuestion, OnAirTaken, QuestionStore
from server import keys
from server.auth import Role
from server.db import MIGRATIONS, make_engine, migrate
from tests.helpers import PASSWORD, Http
from tests.helpers import test_settings as settings_for

T0 = datetime(2027, 5, 9, 12, 0, tzinfo=UTC)


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _async_url(tmp_path: Path, database_url: str) -> str:
    """The URL as the server would use it (async driver), through the real settings."""
    return settings_for(tmp_path, database_url=database_url).database_url


@pytest.fixture
async def engine(database_url: str, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(_async_url(tmp_path, database_url))
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def store(engine: AsyncEngine) -> QuestionStore:
    return QuestionStore(engine)


def new(text: str = "Combien touche le producteur ?", *, theme: str = "fair-price",
        viewer: str = "viewer-aaaaaaaaaaaaaaaa", author: str | None = "Léa",
        segment: str | None = None, flags: tuple[str, ...] = (),
        at: datetime = T0) -> NewQuestion:
    return NewQuestion(theme, text, author, segment, viewer, flags, at)


async def add(store: QuestionStore, *items: NewQuestion) -> list[Question]:
    return await store.insert_many(list(items))


async def set_status(store: QuestionStore, q: Question, status: Status) -> Question:
    changed = await store.update(q.id, q.version, {"status": status.value}, T0)
    assert changed is not None
    return changed


async def on_air_ids(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT id FROM questions WHERE on_air ORDER BY id"))
        return [r[0] for r in rows]


# --- schema ------------------------------------------------------------------


async def test_migrations_build_an_empty_database_and_can_run_again(database_url, tmp_path):
    url = _async_url(tmp_path, database_url)
    first = make_engine(url)
    try:
        async with first.connect() as conn:
            before = await conn.run_sync(lambda c: inspect(c).get_table_names())
        assert "questions" not in before

        await migrate(first)
        async with first.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            indexes = await conn.run_sync(lambda c: inspect(c).get_indexes("questions"))
        assert {"questions", "votes", "staff", "staff_sessions", "alembic_version"} <= tables
        on_air_index = next(i for i in indexes if i["name"] == "ux_questions_on_air")
        assert on_air_index["unique"]
        [kept] = await QuestionStore(first).insert_many([new("Une question avant la relance")])
    finally:
        await first.dispose()

    # A restart runs the migrations again: nothing breaks, nothing is lost.
    second = make_engine(url)
    try:
        await migrate(second)
        await migrate(second)
        assert await QuestionStore(second).get(kept.id) == kept
        async with second.connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        heads = ScriptDirectory.from_config(_alembic_config()).get_heads()
        assert [v[0] for v in versions] == heads
    finally:
        await second.dispose()


async def test_processes_starting_together_migrate_once(database_url, tmp_path):
    url = _async_url(tmp_path, database_url)
    engines = [make_engine(url) for _ in range(3)]
    try:
        async with asyncio.timeout(30):
            await asyncio.gather(*(migrate(e) for e in engines))
        [q] = await QuestionStore(engines[0]).insert_many([new()])
        assert await QuestionStore(engines[2]).get(q.id) == q
    finally:
        for e in engines:
            await e.dispose()


# --- insert and read back ---------------------------------------------------------


async def test_a_batch_keeps_input_order_and_every_character(store):
    paris = ZoneInfo("Europe/Paris")
    items = [
        new("Pourquoi le café équitable coûte-t-il plus cher ? ☕🌍", author="Zoë Ñúñez",
            viewer="viewer-one-aaaaaaaaaa", segment="debat-prix",
            at=datetime(2027, 5, 9, 14, 3, 7, 123456, tzinfo=paris)),
        new("Première ligne\nDeuxième ligne\n\nFin — « guillemets »", theme="growth",
            author=None, viewer="viewer-two-aaaaaaaaaa", flags=("profanity", "duplicate:7"),
            at=datetime(2027, 5, 9, 12, 4, tzinfo=UTC)),
        new("Qui fixe le prix minimum garanti ? 价格", theme="cooperatives",
            author="O'Brien \"Bob\"", viewer="viewer-three-aaaaaaaa",
            at=datetime(2027, 5, 9, 5, 0, tzinfo=ZoneInfo("America/Lima"))),
    ]

    stored = await store.insert_many(items)

    assert [q.text for q in stored] == [n.text for n in items]
    ids = [q.id for q in stored]
    assert ids == sorted(ids) and len(set(ids)) == 3
    for item, q in zip(items, stored, strict=True):
        assert (q.theme, q.text, q.author, q.segment_id, q.viewer_id, q.flags) == (
            item.theme, item.text, item.author, item.segment_id, item.viewer_id, item.flags)
        assert (q.status, q.starred, q.queue_position, q.on_air, q.votes, q.merged_into,
                q.note, q.version) == (Status.PENDING, False, None, False, 0, None, None, 1)
        assert q.created_at == item.created_at == q.updated_at
        assert q.created_at.utcoffset() == timedelta(0)
        # Read back through a fresh query: the same question, field for field.
        again = await store.get(q.id)
        assert again == q
        assert again is not None and again.created_at.tzinfo is not None
        assert again.created_at.utcoffset() == timedelta(0)
    assert stored[0].created_at == datetime(2027, 5, 9, 12, 3, 7, 123456, tzinfo=UTC)
    assert viewer_view(stored[0])["created_at"] == "2027-05-09T12:03:07.123Z"
    assert viewer_view(stored[2])["created_at"] == "2027-05-09T10:00:00.000Z"


async def test_an_empty_store_answers_empty(store):
    assert await store.get(1) is None
    assert await store.query() == []
    assert await store.on_air() is None
    assert await store.counts() == []
    assert await store.voted_ids("viewer-aaaaaaaaaaaaaaaa", []) == set()


# --- lists ------------------------------------------------------------------------


async def test_lists_filter_by_theme_status_and_viewer(store):
    alice, bob = "viewer-alice-aaaaaaaaa", "viewer-bob-aaaaaaaaaaa"
    q1, q2, q3, q4 = await add(
        store, new("prix 1", viewer=alice), new("croissance 2", theme="growth", viewer=bob),
        new("prix 3", viewer=bob), new("coopératives 4", theme="cooperatives", viewer=alice))
    await set_status(store, q2, Status.APPROVED)
    await set_status(store, q3, Status.ANSWERED)
    await set_status(store, q4, Status.REJECTED)

    def ids(questions: list[Question]) -> list[int]:
        return [q.id for q in questions]

    assert ids(await store.query(theme="fair-price")) == [q3.id, q1.id]
    assert ids(await store.query(statuses=[Status.APPROVED, Status.ANSWERED])) == [q3.id, q2.id]
    assert ids(await store.query(statuses=[Status.PENDING])) == [q1.id]
    assert ids(await store.query(statuses=[])) == []
    assert ids(await store.query(theme="fair-price", statuses=[Status.ANSWERED])) == [q3.id]
    assert ids(await store.query(viewer_id=alice)) == [q4.id, q1.id]
    assert ids(await store.query(viewer_id="viewer-nobody-aaaaaaaa")) == []
    assert ids(await store.query(limit=2)) == [q4.id, q3.id]


async def test_popular_sorts_by_votes_then_newest_and_recent_by_newest(store, engine):
    q1, q2, q3, q4 = await add(store, *(new(f"question {n}") for n in range(4)))
    for question, voters in ((q1, 2), (q3, 2), (q4, 1)):
        for v in range(voters):
            await store.vote(question.id, f"voter-{v}-aaaaaaaaaaaaa", T0, add=True)

    popular = await store.query(sort="popular")
    assert [(q.id, q.votes) for q in popular] == [(q3.id, 2), (q1.id, 2), (q4.id, 1),
                                                  (q2.id, 0)]
    assert [q.id for q in await store.query(sort="recent")] == [q4.id, q3.id, q2.id, q1.id]


async def test_merged_questions_leave_the_lists_unless_asked_for(store):
    keep, dup, other = await add(store, new("Le prix du cacao ?"), new("Prix du cacao ?"),
                                 new("Autre chose", theme="growth"))

    merged, target = await store.merge(dup.id, keep.id, T0)

    assert merged.merged_into == keep.id and target.id == keep.id
    assert [q.id for q in await store.query()] == [other.id, keep.id]
    assert [q.id for q in await store.query(include_merged=True)] == [other.id, dup.id, keep.id]
    assert sorted(await store.counts()) == [("fair-price", "pending", 1),
                                            ("growth", "pending", 1)]


# --- staff changes -------------------------------------------------------------


async def test_an_update_on_a_stale_version_changes_nothing(store):
    [q] = await add(store, new())
    later = T0 + timedelta(minutes=3)

    first = await store.update(q.id, q.version, {"status": "approved", "note": "à garder"}, later)
    stale = await store.update(q.id, q.version, {"status": "rejected"}, later)

    assert first is not None
    assert (first.status, first.note, first.version) == (Status.APPROVED, "à garder", 2)
    assert first.updated_at == later and first.created_at == T0
    assert stale is None
    assert await store.get(q.id) == first
    assert await store.update(q.id + 999, 1, {"status": "approved"}, later) is None


async def test_requeue_keeps_the_starred_queue_numbered_from_one(store):
    q1, q2, q3, q4 = await add(store, *(new(f"question {n}") for n in range(4)))
    end = 1_000_000
    for q in (q1, q2, q3):
        changed, _ = await store.requeue(q.id, q.version, {"starred": True}, end, T0)
        assert changed is not None

    async def queue() -> list[tuple[int, int | None]]:
        starred = [q for q in await store.query() if q.queue_position is not None]
        return sorted((q.queue_position or 0, q.id) for q in starred)

    assert await queue() == [(1, q1.id), (2, q2.id), (3, q3.id)]

    current = await store.get(q3.id)
    assert current is not None
    changed, moved = await store.requeue(q3.id, current.version, {}, 1, T0)
    assert changed is not None and changed.queue_position == 1
    assert sorted((q.id, q.queue_position) for q in moved) == [(q1.id, 2), (q2.id, 3)]
    assert await queue() == [(1, q3.id), (2, q1.id), (3, q2.id)]

    # Taken out of the queue: the others close the gap.
    current = await store.get(q1.id)
    assert current is not None
    changed, moved = await store.requeue(q1.id, current.version, {"starred": False}, None, T0)
    assert changed is not None and (changed.starred, changed.queue_position) == (False, None)
    assert [(q.id, q.queue_position) for q in moved] == [(q2.id, 2)]
    assert await queue() == [(1, q3.id), (2, q2.id)]

    # A stale version moves nobody.
    before = await store.query()
    changed, moved = await store.requeue(q4.id, q4.version + 5, {"starred": True}, 1, T0)
    assert (changed, moved) == (None, [])
    assert await store.query() == before



async def test_questions_starred_at_once_get_distinct_places_in_the_queue(store):
    questions = await add(store, *(new(f"question {n}") for n in range(6)))

    async with asyncio.timeout(20):
        results = await asyncio.gather(*(
            store.requeue(q.id, q.version, {"starred": True}, 1_000_000, T0) for q in questions))

    assert all(changed is not None for changed, _ in results)
    positions = sorted(q.queue_position or 0 for q in await store.query() if q.starred)
    assert positions == [1, 2, 3, 4, 5, 6]

# --- votes ----------------------------------------------------------------------


async def test_one_vote_per_viewer_and_it_can_be_withdrawn(store):
    [q] = await add(store, new())
    ana, ben = "viewer-ana-aaaaaaaaaaaa", "viewer-ben-aaaaaaaaaaaa"

    assert await store.vote(q.id, ana, T0, add=True) == (1, True)
    assert await store.vote(q.id, ana, T0, add=True) == (1, False)
    assert await store.vote(q.id, ben, T0, add=True) == (2, True)
    assert await store.voted_ids(ana, [q.id]) == {q.id}

    assert await store.vote(q.id, ana, T0, add=False) == (1, True)
    assert await store.vote(q.id, ana, T0, add=False) == (1, False)
    assert await store.voted_ids(ana, [q.id]) == set()
    stored = await store.get(q.id)
    assert stored is not None and stored.votes == 1


async def test_concurrent_votes_of_one_viewer_count_once(store):
    [q] = await add(store, new())
    viewer = "viewer-eager-aaaaaaaaa"

    async with asyncio.timeout(20):
        results = await asyncio.gather(*(store.vote(q.id, viewer, T0, add=True)
                                         for _ in range(5)))

    assert [changed for _, changed in results].count(True) == 1
    stored = await store.get(q.id)
    assert stored is not None and stored.votes == 1


async def test_merge_moves_distinct_voters_to_the_kept_question(store):
    keep, dup = await add(store, new("Le prix du cacao ?"), new("Quel prix pour le cacao ?"))
    for voter in ("a", "b"):
        await store.vote(keep.id, f"viewer-{voter}-aaaaaaaaaaaaaa", T0, add=True)
    for voter in ("b", "c", "d"):
        await store.vote(dup.id, f"viewer-{voter}-aaaaaaaaaaaaaa", T0, add=True)

    merged, target = await store.merge(dup.id, keep.id, T0 + timedelta(seconds=1))

    assert target.votes == 4  # a, b, c, d: b counted once
    assert (merged.merged_into, merged.votes) == (keep.id, 0)
    assert await store.get(dup.id) == merged
    assert await store.voted_ids("viewer-c-aaaaaaaaaaaaaa", [keep.id, dup.id]) == {keep.id}
    assert await store.voted_ids("viewer-b-aaaaaaaaaaaaaa", [keep.id, dup.id]) == {keep.id}


# --- on air ---------------------------------------------------------------------


async def test_one_question_on_air_at_a_time(store, engine):
    q1, q2 = await add(store, new("première"), new("seconde"))

    off, on = await store.set_on_air(q1.id, T0)
    assert off == [] and on is not None
    assert (on.id, on.on_air, on.status) == (q1.id, True, Status.APPROVED)

    off, on = await store.set_on_air(q2.id, T0)
    assert [q.id for q in off] == [q1.id] and not off[0].on_air
    assert on is not None and on.id == q2.id
    assert await store.on_air() == on
    assert await on_air_ids(engine) == [q2.id]

    # The database itself refuses a second question on air.
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE questions SET on_air = :t WHERE id = :id"),
                               {"t": True, "id": q1.id})
    assert await on_air_ids(engine) == [q2.id]

    off, on = await store.set_on_air(None, T0)
    assert [q.id for q in off] == [q2.id] and on is None
    assert await store.on_air() is None


async def test_two_questions_put_on_air_at_once_leave_exactly_one(store, engine):
    questions = await add(store, *(new(f"question {n}") for n in range(6)))
    for a, b in zip(questions[::2], questions[1::2], strict=True):
        async with asyncio.timeout(20):
            results = await asyncio.gather(store.set_on_air(a.id, T0),
                                           store.set_on_air(b.id, T0),
                                           return_exceptions=True)
        for result in results:
            assert isinstance(result, tuple | OnAirTaken), repr(result)
        winners = await on_air_ids(engine)
        assert len(winners) == 1 and winners[0] in (a.id, b.id)
        on_air = await store.on_air()
        assert on_air is not None and on_air.id == winners[0]


async def test_two_moderators_putting_questions_on_air_at_once(database_url, tmp_path,
                                                              start_server, http):
    server = await start_server(settings_for(tmp_path, database_url=database_url))
    base = str(server.make_url("")).rstrip("/")
    mods: list[Http] = []
    for name in ("marie", "paul"):
        await server.app[keys.AUTH].add_user(name, PASSWORD, Role.MODERATOR)
        mod = await http(base)
        await mod.sign_in(name)
        mods.append(mod)
    viewer = await http(base)
    ids = []
    for n in range(4):
        status, body, _ = await viewer.request(
            "POST", "/api/questions", {"theme": "growth", "text": f"Question numéro {n} ?"})
        assert status == 201
        ids.append(body["id"])

    for a, b in ((ids[0], ids[1]), (ids[2], ids[3])):
        async with asyncio.timeout(20):
            answers = await asyncio.gather(
                mods[0].request("PUT", "/api/on-air", {"question_id": a}),
                mods[1].request("PUT", "/api/on-air", {"question_id": b}))
        assert [status for status, _, _ in answers] == [200, 200], answers
        status, shown, _ = await viewer.request("GET", "/api/on-air")
        assert status == 200 and shown is not None and shown["id"] in (a, b)
        status, listed, _ = await mods[0].request("GET", "/api/questions")
        assert [q["id"] for q in listed if q["on_air"]] == [shown["id"]]


# --- metrics ----------------------------------------------------------------------


async def test_counts_group_by_theme_and_status(store):
    qs = await add(store, new("a"), new("b"), new("c", theme="growth"),
                   new("d", theme="growth"), new("e", theme="cooperatives"))
    await set_status(store, qs[1], Status.APPROVED)
    await set_status(store, qs[3], Status.REJECTED)

    assert sorted(await store.counts()) == [
        ("cooperatives", "pending", 1), ("fair-price", "approved", 1),
        ("fair-price", "pending", 1), ("growth", "pending", 1), ("growth", "rejected", 1)]


# --- through the real app ---------------------------------------------------------


async def test_fifty_viewers_asking_at_once_are_all_stored(database_url, tmp_path,
                                                          start_server, http):
    settings = settings_for(tmp_path, database_url=database_url,
                             qa={"rate_per_ip": {"count": 1000, "window_s": 600}})
    server = await start_server(settings)
    base = str(server.make_url("")).rstrip("/")
    viewers = [await http(base) for _ in range(50)]
    themes = ["cooperatives", "growth", "fair-price"]

    async with asyncio.timeout(30):
        answers = await asyncio.gather(*(
            v.request("POST", "/api/questions",
                      {"theme": themes[n % 3], "author": f"Spectateur {n}",
                       "text": f"Question {n} de la salle : où va l'argent ? 🌱\nMerci !"})
            for n, v in enumerate(viewers)))

    assert [status for status, _, _ in answers] == [201] * 50, answers
    bodies = [body for _, body, _ in answers]
    assert len({b["id"] for b in bodies}) == 50
    for n, body in enumerate(bodies):
        assert body["author"] == f"Spectateur {n}" and body["theme"] == themes[n % 3]

    # Durable once answered: a server started afresh on the same database has them all.
    await server.close()
    restarted = await start_server(settings)
    new_base = str(restarted.make_url("")).rstrip("/")
    for viewer, body in zip(viewers, bodies, strict=True):
        again = Http(new_base, viewer.session)  # the same viewer, same cookie
        status, mine, _ = await again.request("GET", "/api/questions/mine")
        assert status == 200
        assert mine == [body]
    stored = await restarted.app[keys.QUESTIONS].export()
    assert sorted(q.id for q in stored) == sorted(b["id"] for b in bodies)
