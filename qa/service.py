"""Question use cases: submit, list, vote, triage, merge, on air.

The service validates with the model, persists through the store, enforces
rate limits and publishes domain events; it knows nothing of HTTP or sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from qa import model
from qa.errors import (
    CannotMerge,
    InvalidQuestion,
    NotPublishable,
    QuestionNotFound,
    QuestionNotStored,
    RateLimited,
    StaleVersion,
    StorageUnavailable,
)
from qa.events import OnAirChanged, QuestionChanged, QuestionRemoved, QuestionSubmitted
from qa.model import DuplicateIndex, Limits, ProfanityFilter, Question, Status
from qa.store import NewQuestion, OnAirTaken, QuestionStore, VoteChange, VoteOutcome
from server.admission import Lane, LoopMonitor, WriteQueue
from server.clock import Clock
from server.db import NO_GATE, WriteGate
from server.ratelimit import RateLimiter
from server.settings import LoadSettings, QaSettings

log = logging.getLogger("tv.qa")

Publish = Callable[[object], Awaitable[None]]

_BATCH_MAX = 256
_VOTE_BATCH_MAX = 512
REFRESH_S = 0.5
PUBLIC_LIST_TTL_S = 0.5
"""A public question list is read from the database at most this often per
(theme, sort, status): a thousand viewers reconnecting at once cost a few
queries, not a thousand. Pushes carry every change meanwhile."""


@dataclass(frozen=True)
class VotesChanged:
    """Only the vote count moved; the realtime edge may coalesce these."""

    question: Question


@dataclass
class _Pending:
    item: NewQuestion
    future: asyncio.Future[Question]


@dataclass
class _PendingVote:
    change: VoteChange
    future: asyncio.Future[VoteOutcome]


class QuestionService:
    def __init__(self, store: QuestionStore, limiter: RateLimiter, clock: Clock,
                 publish: Publish, theme_ids: Sequence[str], settings: QaSettings,
                 shared: bool = False, segment_ids: Sequence[str] | None = None,
                 load: LoadSettings | None = None, loop: LoopMonitor | None = None,
                 gate: WriteGate = NO_GATE) -> None:
        self.store = store
        self.limiter = limiter
        self.clock = clock
        self.publish = publish
        self.theme_ids = tuple(theme_ids)
        self.segment_ids = tuple(segment_ids) if segment_ids is not None else None
        self.settings = settings
        self.limits = Limits(settings.text_max, settings.author_max)
        self.profanity = ProfanityFilter.from_list(
            (*model.BUILTIN_PROFANITY, *settings.profanity))
        self.duplicates = DuplicateIndex(settings.duplicate_threshold)
        self._last_indexed = 0
        # With several processes on one database (shared), the duplicate index
        # also reads the others' questions, at most every REFRESH_S.
        self.shared = shared
        self._refreshed_at = float("-inf")
        load = load or LoadSettings()
        # Audience work is bounded: a full queue, a writer behind by more than
        # max_wait_s or a late event loop refuse at once (503, Retry-After).
        self.questions_queue: WriteQueue[_Pending] = WriteQueue(
            "questions", load.question_queue, load.max_wait_s, _BATCH_MAX, loop)
        self.votes_queue: WriteQueue[_PendingVote] = WriteQueue(
            "votes", load.vote_queue, load.max_wait_s, _VOTE_BATCH_MAX, loop)
        self.reads = Lane("question lists", load.read_concurrency, load.read_queue,
                          load.max_wait_s, loop)
        # SQLite has one write lock for the whole file: this process's writers
        # take turns at the gate, in order, and after the programme's.
        self.gate = gate
        self._public_lists: dict[tuple[str | None, str, tuple[Status, ...]],
                                 tuple[float, list[Question]]] = {}
        self._on_air: tuple[float, Question | None] | None = None
        self._writers: list[asyncio.Task[None]] = []

    # --- lifecycle ------------------------------------------------------

    async def start(self) -> None:
        await self._refresh_index()
        self._writers = [
            asyncio.create_task(self._write_loop(), name="question-writer"),
            asyncio.create_task(self._vote_loop(), name="vote-writer")]

    async def stop(self) -> None:
        for writer in self._writers:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        for pending in self.questions_queue.drain():
            pending.future.cancel()
        for vote in self.votes_queue.drain():
            vote.future.cancel()

    def load_stats(self) -> dict[str, Any]:
        """Queue depths, refusals and database times, read without any I/O."""
        return {"questions": self.questions_queue.stats(), "votes": self.votes_queue.stats(),
                "reads": self.reads.stats()}

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[None]:
        async with self.gate.audience():
            yield

    # --- viewers --------------------------------------------------------

    async def submit(self, viewer_id: str, ip: str, body: Mapping[str, Any]) -> Question:
        """Validate, rate-limit and durably store a viewer's question."""
        theme = model.clean_theme(body.get("theme"), self.theme_ids)
        text = model.clean_text(body.get("text"), self.limits)
        author = model.clean_author(body.get("author"), self.limits)
        segment = model.clean_segment(body.get("segment_id"), self.segment_ids)
        # Refused for load before the limits count it: a viewer told to try
        # again later has not used up one of their questions.
        self.questions_queue.check()
        await self._limit([(f"ask:viewer:{viewer_id}", self.settings.per_viewer),
                           (f"ask:ip:{ip}", self.settings.per_ip)])
        pending = _Pending(
            NewQuestion(theme, text, author, segment, viewer_id, (), self.clock.now()),
            asyncio.get_running_loop().create_future())
        self.questions_queue.put(pending)
        question = await pending.future
        log.info("question received", extra={"question_id": question.id, "theme": theme,
                                              "flags": list(question.flags)})
        await self.publish(QuestionSubmitted(question))
        return question

    async def _limit(self, checks: Sequence[tuple[str, Any]]) -> None:
        # Every limit counted, or none, in one step (one Redis round trip).
        wait = await self.limiter.hit_all(checks)
        if wait is not None:
            raise RateLimited(wait)

    async def list_public(self, viewer_id: str, theme: str | None, sort: str,
                          status: str | None = None) -> list[tuple[Question, bool]]:
        """Approved and answered questions, each with whether this viewer voted."""
        statuses = [Status.APPROVED, Status.ANSWERED]
        if status:
            wanted = self._status(status)
            statuses = [wanted] if wanted.is_public else []
        key = (self._theme_filter(theme), self._sort(sort), tuple(statuses))
        async with self.reads.slot():
            questions = await self._public_list(key)
            voted = await self.store.voted_ids(viewer_id, [q.id for q in questions])
        return [(q, q.id in voted) for q in questions]

    async def _public_list(self, key: tuple[str | None, str, tuple[Status, ...]]
                           ) -> list[Question]:
        now = self.clock.monotonic()
        cached = self._public_lists.get(key)
        if cached is not None and now - cached[0] < PUBLIC_LIST_TTL_S:
            return cached[1]
        theme, sort, statuses = key
        questions = await self.store.query(theme=theme, statuses=list(statuses), sort=sort)
        self._public_lists[key] = (now, questions)
        return questions

    def _lists_changed(self) -> None:
        self._public_lists.clear()
        self._on_air = None

    async def list_all(self, theme: str | None, status: str | None, sort: str) -> list[Question]:
        statuses = [self._status(status)] if status else None
        return await self.store.query(theme=self._theme_filter(theme), statuses=statuses,
                                     sort=self._sort(sort))

    async def mine(self, viewer_id: str) -> list[Question]:
        async with self.reads.slot():
            return await self.store.query(viewer_id=viewer_id, include_merged=True)

    async def vote(self, question_id: int, viewer_id: str, add: bool,
                   ip: str = "unknown") -> tuple[int, bool]:
        """Add (or withdraw) this viewer's vote; one per viewer. Returns (votes, voted).

        A viewer id is a cookie anyone can mint afresh, so the address is
        limited too: in all, and per question (a venue behind one NAT votes
        a lot, but not hundreds of times for one question).
        """
        self.votes_queue.check()
        await self._limit([
            (f"vote:viewer:{viewer_id}", self.settings.votes_per_viewer),
            (f"vote:ip:{ip}", self.settings.votes_per_ip),
            (f"vote:ip:{ip}:q:{question_id}", self.settings.votes_per_ip_question)])
        # Written with the other votes of the moment, in one transaction.
        pending = _PendingVote(VoteChange(question_id, viewer_id, add),
                               asyncio.get_running_loop().create_future())
        self.votes_queue.put(pending)
        outcome = await pending.future
        if outcome.question is None:
            raise QuestionNotFound()
        if outcome.changed:
            await self.publish(VotesChanged(outcome.question))
        return outcome.question.votes, add

    # --- staff ----------------------------------------------------------

    async def get(self, question_id: int) -> Question:
        question = await self.store.get(question_id)
        if question is None:
            raise QuestionNotFound()
        return question

    async def patch(self, question_id: int, body: Mapping[str, Any], actor: str) -> Question:
        """Apply a moderator's change made on top of ``version``; StaleVersion if outdated."""
        patch, version = model.parse_patch(body, self.limits, self.segment_ids)
        current = await self.get(question_id)
        if current.version != version:
            raise StaleVersion(current)
        if current.merged_into is not None:
            raise CannotMerge("merged questions cannot be changed")
        values: dict[str, Any] = {}
        if patch.status is not None:
            values["status"] = patch.status.value
            if patch.status == Status.REJECTED and current.on_air:
                values["on_air"] = False
        if patch.text is not None:
            values["text"] = patch.text
            values["flags"] = model.merge_flags(current.flags, self.profanity, patch.text)
        if patch.set_segment:
            values["segment_id"] = patch.segment_id
        if patch.set_note:
            values["note"] = patch.note
        changed, moved = await self._apply(current, patch, version, values)
        if changed is None:
            raise StaleVersion(await self.get(question_id))
        log.info("question changed by staff", extra={
            "question_id": question_id, "by": actor, "fields": sorted(set(body) - {"version"})})
        await self._announce(current, changed)
        for other in moved:
            await self.publish(QuestionChanged(other, other.is_public, False))
        if current.on_air and not changed.on_air:
            await self.publish(OnAirChanged(None))
        if patch.text is not None:
            self.duplicates.add(changed.id, changed.theme, changed.text)
        return changed

    async def _apply(self, current: Question, patch: model.Patch, version: int,
                     values: dict[str, Any]) -> tuple[Question | None, list[Question]]:
        starred = current.starred if patch.starred is None else patch.starred
        if patch.queue_position is not None:
            starred = True
        now = self.clock.now()
        self._lists_changed()
        if starred == current.starred and patch.queue_position is None:
            async with self._writing():
                return await self.store.update(current.id, version, values, now), []
        values["starred"] = starred
        if not starred:
            position = None
        elif patch.queue_position is not None:
            position = patch.queue_position
        elif current.queue_position is not None:
            position = current.queue_position
        else:
            position = 1_000_000  # the end of the queue
        async with self._writing():
            return await self.store.requeue(current.id, version, values, position, now)

    async def _announce(self, before: Question, after: Question) -> None:
        await self.publish(QuestionChanged(after, before.is_public,
                                           before.status != after.status))

    async def merge(self, question_id: int, into_id: Any, actor: str) -> Question:
        """Fold a duplicate into another question; its voters count for the other."""
        if isinstance(into_id, bool) or not isinstance(into_id, int):
            raise InvalidQuestion("merge_target_required", "into")
        dup, target = await self.get(question_id), await self.get(into_id)
        if dup.id == target.id:
            raise CannotMerge("a question cannot be merged into itself")
        if dup.merged_into is not None or target.merged_into is not None:
            raise CannotMerge("one of these questions is already merged")
        self._lists_changed()
        async with self._writing():
            merged, target = await self.store.merge(dup.id, target.id, self.clock.now())
        self.duplicates.discard(dup.id)
        log.info("questions merged", extra={"question_id": dup.id, "into": target.id,
                                            "by": actor, "votes": target.votes})
        await self.publish(QuestionRemoved(merged, dup.is_public))
        await self.publish(QuestionChanged(target, target.is_public, False))
        if dup.on_air:
            await self.publish(OnAirChanged(None))
        return target

    async def set_on_air(self, question_id: Any, actor: str) -> Question | None:
        """Put one question on air (replacing any other), or clear with None."""
        before: Question | None = None
        if question_id is not None:
            if isinstance(question_id, bool) or not isinstance(question_id, int):
                raise InvalidQuestion("question_id_required", "question_id")
            before = await self.get(question_id)
            if before.status == Status.REJECTED or before.merged_into is not None:
                raise NotPublishable()
        for attempt in range(3):
            try:
                self._lists_changed()
                async with self._writing():
                    off, on = await self.store.set_on_air(question_id, self.clock.now())
                break
            except OnAirTaken:
                if attempt == 2:
                    raise
        for q in off:
            await self.publish(QuestionChanged(q, q.is_public, False))
        if on is not None and before is not None and on.version != before.version:
            await self._announce(before, on)
        log.info("on air question changed", extra={"question_id": question_id, "by": actor})
        await self.publish(OnAirChanged(on))
        return on

    async def on_air(self, staff: bool = False) -> Question | None:
        """The question on air; read at most twice a second (every viewer's
        page asks for it when it connects). Staff (a moderator's console
        connecting) are never refused for the audience's load."""
        now = self.clock.monotonic()
        if self._on_air is not None and now - self._on_air[0] < PUBLIC_LIST_TTL_S:
            return self._on_air[1]
        if staff:
            question = await self.store.on_air()
            self._on_air = (now, question)
            return question
        async with self.reads.slot():
            question = await self.store.on_air()
        self._on_air = (now, question)
        return question

    async def export(self) -> list[Question]:
        return await self.store.all_for_export()

    async def counts(self) -> list[tuple[str, str, int]]:
        return await self.store.counts()

    # --- helpers --------------------------------------------------------

    def _theme_filter(self, theme: str | None) -> str | None:
        return model.clean_theme(theme, self.theme_ids) if theme else None

    @staticmethod
    def _status(status: str) -> Status:
        try:
            return Status(status)
        except ValueError as e:
            raise InvalidQuestion("status_invalid", "status") from e

    @staticmethod
    def _sort(sort: str) -> str:
        if sort not in ("popular", "recent", ""):
            raise InvalidQuestion("sort_invalid", "sort")
        return sort or "recent"

    async def _refresh_index(self) -> None:
        for qid, theme, text, _status, merged in await self.store.since(self._last_indexed):
            if merged is None:
                self.duplicates.add(qid, theme, text)
            self._last_indexed = max(self._last_indexed, qid)

    async def _write_loop(self) -> None:
        while True:
            batch = await self.questions_queue.batch()
            started = time.monotonic()
            async with self._writing():
                await self._write_isolated(batch)
            self.questions_queue.wrote(len(batch), time.monotonic() - started)

    async def _vote_loop(self) -> None:
        while True:
            batch = await self.votes_queue.batch()
            started = time.monotonic()
            try:
                async with self._writing():
                    outcomes = await self.store.apply_votes([p.change for p in batch],
                                                            self.clock.now())
            except StorageUnavailable as e:
                log.warning("the database cannot store votes now",
                            extra={"count": len(batch), "reason": e.detail})
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(StorageUnavailable(e.detail))
                self.votes_queue.wrote(0, time.monotonic() - started)
                continue
            except Exception:
                log.exception("a batch of votes could not be stored", extra={"count": len(batch)})
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(StorageUnavailable("votes not stored"))
                self.votes_queue.wrote(0, time.monotonic() - started)
                continue
            self.votes_queue.wrote(len(batch), time.monotonic() - started)
            for p, outcome in zip(batch, outcomes, strict=True):
                if not p.future.done():
                    p.future.set_result(outcome)

    async def _write_isolated(self, batch: list[_Pending]) -> None:
        """Store a batch; if it fails, store its questions one by one.

        One question the database refuses must never cost the others theirs:
        each gets its own answer (stored, not stored, or storage unavailable).
        """
        try:
            await self._write(batch)
            return
        except StorageUnavailable as e:
            log.warning("the database cannot store questions now",
                        extra={"count": len(batch), "reason": e.detail})
            failures: list[tuple[_Pending, Exception]] = [(p, e) for p in batch]
        except Exception:
            if len(batch) == 1:
                log.exception("a question could not be stored")
                failures = [(batch[0], QuestionNotStored())]
            else:
                log.warning("a batch of questions failed: storing them one by one",
                            extra={"count": len(batch)})
                for p in batch:
                    await self._write_isolated([p])
                return
        for p, error in failures:
            if not p.future.done():
                p.future.set_exception(error)

    async def _write(self, batch: list[_Pending]) -> None:
        """Flag and insert a batch in one transaction (group commit)."""
        if self.shared and self.clock.monotonic() - self._refreshed_at >= REFRESH_S:
            await self._refresh_index()
            self._refreshed_at = self.clock.monotonic()
        items: list[NewQuestion] = []
        toks = [model.tokens(p.item.text) for p in batch]
        for p, words in zip(batch, toks, strict=True):
            dup = self.duplicates.best_match_tokens(p.item.theme, words)
            items.append(replace(p.item, flags=model.flags_for(p.item.text, self.profanity, dup)))
        stored = await self.store.insert_many(items)
        for i, (question, words) in enumerate(zip(stored, toks, strict=True)):
            if question.duplicate_of is None:
                # A duplicate within the same batch: the earlier ones are indexed by now.
                dup = self.duplicates.best_match_tokens(question.theme, words)
                if dup is not None:
                    flags = (*question.flags, f"duplicate:{dup}")
                    stored[i] = question = replace(question, flags=flags)
                    try:
                        await self.store.set_flags(question.id, flags)
                    except Exception:
                        # Stored already: a lost hint must not turn into a lost answer.
                        log.exception("flagging a duplicate failed",
                                      extra={"question_id": question.id})
            self.duplicates.add_tokens(question.id, question.theme, words)
            if not self.shared:
                self._last_indexed = max(self._last_indexed, question.id)
        for p, question in zip(batch, stored, strict=True):
            if not p.future.done():
                p.future.set_result(question)
