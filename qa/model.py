"""Pure question logic: validation, representations, flags.

No web, database or Socket.IO here; everything is plain data and functions
so that it can be tested without a server.
"""

from __future__ import annotations

import enum
import math
import re
import unicodedata
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from qa.errors import InvalidQuestion


class Status(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    ANSWERED = "answered"

    @property
    def is_public(self) -> bool:
        """Viewers see approved and answered questions only."""
        return self in (Status.APPROVED, Status.ANSWERED)


@dataclass(frozen=True)
class Limits:
    text_max: int = 500
    author_max: int = 60


@dataclass(frozen=True)
class Question:
    id: int
    theme: str
    text: str
    author: str | None
    segment_id: str | None
    status: Status
    starred: bool
    queue_position: int | None
    on_air: bool
    votes: int
    merged_into: int | None
    flags: tuple[str, ...]
    note: str | None
    viewer_id: str
    created_at: datetime
    updated_at: datetime
    version: int

    @property
    def is_public(self) -> bool:
        return self.status.is_public and self.merged_into is None

    @property
    def duplicate_of(self) -> int | None:
        for flag in self.flags:
            if flag.startswith("duplicate:"):
                return int(flag.split(":", 1)[1])
        return None


def iso(dt: datetime) -> str:
    """ISO 8601 UTC with a Z, to the millisecond, as the contract wants."""
    text = dt.isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z") if text.endswith("+00:00") else text + "Z"


def staff_view(q: Question) -> dict[str, Any]:
    """Every field: what moderators see."""
    return {
        "id": q.id,
        "theme": q.theme,
        "text": q.text,
        "author": q.author,
        "segment_id": q.segment_id,
        "status": q.status.value,
        "starred": q.starred,
        "queue_position": q.queue_position,
        "on_air": q.on_air,
        "votes": q.votes,
        "merged_into": q.merged_into,
        "flags": list(q.flags),
        "duplicate_of": q.duplicate_of,
        "note": q.note,
        "viewer_id": q.viewer_id,
        "created_at": iso(q.created_at),
        "updated_at": iso(q.updated_at),
        "version": q.version,
    }


_PRIVATE_FIELDS = ("flags", "duplicate_of", "note", "viewer_id")


def viewer_view(q: Question) -> dict[str, Any]:
    """What a viewer may see of a question: no flags, note or viewer_id."""
    view = staff_view(q)
    for key in _PRIVATE_FIELDS:
        del view[key]
    return view


# --- validation -----------------------------------------------------------

# Bidirectional overrides can make a question read differently on air than in
# the console; they have no use in a question.
_BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _has_control(text: str, allow_newline: bool) -> bool:
    for ch in text:
        if ch in _BIDI_CONTROLS:
            return True
        category = unicodedata.category(ch)
        # Cs: half of a surrogate pair, which JSON can carry and no database can store.
        if category == "Cs" or (category == "Cc" and not (allow_newline and ch in "\n\t")):
            return True
    return False


def clean_text(value: Any, limits: Limits) -> str:
    """A question's text, NFC-normalised and trimmed, or InvalidQuestion."""
    if not isinstance(value, str):
        raise InvalidQuestion("text_required", "text")
    text = unicodedata.normalize("NFC", value.replace("\r\n", "\n").replace("\r", "\n")).strip()
    if not text:
        raise InvalidQuestion("text_required", "text")
    if _has_control(text, allow_newline=True):
        raise InvalidQuestion("text_control_characters", "text")
    if len(text) > limits.text_max:
        raise InvalidQuestion("text_too_long", "text", max=limits.text_max, length=len(text))
    return re.sub(r"\n{3,}", "\n\n", text)


def clean_author(value: Any, limits: Limits) -> str | None:
    """An optional author name on one line, or InvalidQuestion."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidQuestion("author_invalid", "author")
    author = unicodedata.normalize("NFC", value).strip()
    if not author:
        return None
    if _has_control(author, allow_newline=False):
        raise InvalidQuestion("author_control_characters", "author")
    if len(author) > limits.author_max:
        raise InvalidQuestion("author_too_long", "author", max=limits.author_max)
    return author


def clean_theme(value: Any, theme_ids: Iterable[str]) -> str:
    if not isinstance(value, str) or value not in set(theme_ids):
        raise InvalidQuestion("unknown_theme", "theme")
    return value


def clean_segment(value: Any, segment_ids: Iterable[str] | None = None) -> str | None:
    """A segment of the running order (any well-formed id when none is given)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,63}", value):
        raise InvalidQuestion("segment_invalid", "segment_id")
    if segment_ids is not None and value not in set(segment_ids):
        raise InvalidQuestion("segment_invalid", "segment_id")
    return value


def clean_note(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 2000:
        raise InvalidQuestion("note_invalid", "note")
    if _has_control(value, allow_newline=True):
        raise InvalidQuestion("note_invalid", "note")
    return value.strip() or None


# --- text similarity and profanity ----------------------------------------

_STOPWORDS = frozenset(
    """
    a au aux avec ce ces comment dans de des du elle en est et il ils je la le les leur
    leurs mais ne nous on ou par pas pour qu que qui quoi sa se ses son sont sur ta te
    tes ton tu un une vos votre vous y l d c s n j m t est-ce
    the a an and are as at be by do does for from how in is it of on or that this to
    what when where which who why will with you your can
    """.split()  # noqa: SIM905 (a word list reads better as prose)
)


def fold(text: str) -> str:
    """Lower case without accents or punctuation, single-spaced."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(re.findall(r"[a-z0-9]+", stripped.replace("œ", "oe").replace("æ", "ae")))


def tokens(text: str) -> frozenset[str]:
    """The meaningful words of a text, for duplicate detection."""
    return frozenset(w for w in fold(text).split() if w not in _STOPWORDS and len(w) > 1)


def similarity(a: frozenset[str], b: Collection[str]) -> float:
    """Jaccard similarity of two token sets (1.0 is the same words).

    ``b`` may be any collection of distinct words (the index keeps tuples).
    """
    if not a or not b:
        return 0.0
    shared = len(a.intersection(b))
    return shared / (len(a) + len(b) - shared)


BUILTIN_PROFANITY = (
    # French
    "con", "conne", "connard", "connasse", "connards", "salope", "salaud", "salauds", "merde",
    "putain", "pute", "encule", "enculé", "enculer", "nique", "niquer", "batard", "bâtard",
    "fdp", "ntm", "pd", "tapette", "bouffon", "abruti", "abrutis", "debile", "débile",
    "couille", "couilles", "bite", "chier", "emmerde", "emmerder", "gueule", "ta gueule",
    "fils de pute", "va te faire foutre", "foutre", "pétasse", "petasse", "enfoiré", "enfoire",
    # English
    "fuck", "fucking", "fucker", "motherfucker", "shit", "bullshit", "bitch", "bastard",
    "asshole", "dick", "cunt", "wanker", "twat", "prick", "slut", "whore", "retard",
    "idiot", "moron", "stupid",
)


@dataclass(frozen=True)
class ProfanityFilter:
    """Flags (never drops) a text containing a listed word or phrase."""

    words: frozenset[str]
    phrases: tuple[str, ...]

    @classmethod
    def from_list(cls, entries: Iterable[str]) -> ProfanityFilter:
        words: set[str] = set()
        phrases: list[str] = []
        for entry in entries:
            folded = fold(entry)
            if not folded:
                continue
            (phrases.append if " " in folded else words.add)(folded)
        return cls(frozenset(words), tuple(phrases))

    def matches(self, text: str) -> bool:
        folded = fold(text)
        if self.words.intersection(folded.split()):
            return True
        padded = f" {folded} "
        return any(f" {p} " in padded for p in self.phrases)


@dataclass
class DuplicateIndex:
    """Finds the most similar earlier question of the same theme.

    An inverted index from word to question ids. A question can only reach
    the similarity threshold t with one that contains all but n - ceil(t*n)
    of its n words, so looking up its n - ceil(t*n) + 1 rarest words finds
    every candidate (prefix filtering): the cost stays flat even when every
    question says "commerce équitable".
    """

    threshold: float
    capacity: int = 20_000
    """Questions kept, the latest ones: a duplicate is looked for among them, and
    the index's memory stays flat through a show however many are asked."""
    # Tuples of strings are not tracked by the garbage collector, unlike sets:
    # thousands of questions must not lengthen the collector's pauses.
    _tokens: dict[int, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    _by_word: dict[tuple[str, str], set[int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._tokens)

    def add(self, question_id: int, theme: str, text: str) -> None:
        self.add_tokens(question_id, theme, tokens(text))

    def add_tokens(self, question_id: int, theme: str, toks: frozenset[str]) -> None:
        self.discard(question_id)
        self._tokens[question_id] = (theme, tuple(sorted(toks)))
        for word in toks:
            self._by_word.setdefault((theme, word), set()).add(question_id)
        while len(self._tokens) > self.capacity:
            self.discard(next(iter(self._tokens)))  # the one added longest ago

    def discard(self, question_id: int) -> None:
        old = self._tokens.pop(question_id, None)
        if old is None:
            return
        theme, toks = old
        for word in toks:
            ids = self._by_word.get((theme, word))
            if ids is not None:
                ids.discard(question_id)
                if not ids:
                    del self._by_word[(theme, word)]

    def best_match(self, theme: str, text: str) -> int | None:
        return self.best_match_tokens(theme, tokens(text))

    def best_match_tokens(self, theme: str, toks: frozenset[str]) -> int | None:
        n = len(toks)
        if n == 0:
            return None
        t = self.threshold
        must_share = math.ceil(t * n - 1e-9)
        by_rarity = sorted(toks, key=lambda w: (len(self._by_word.get((theme, w), ())), w))
        candidates: set[int] = set()
        for word in by_rarity[: n - must_share + 1]:
            candidates |= self._by_word.get((theme, word), set())
        best, best_score = None, t
        for qid in sorted(candidates):
            other = self._tokens[qid][1]
            if not t * n - 1e-9 <= len(other) <= n / t + 1e-9:
                continue  # too short or too long to be that similar
            score = similarity(toks, other)
            if score >= best_score and (best is None or score > best_score):
                best, best_score = qid, score
        return best


def flags_for(text: str, profanity: ProfanityFilter, duplicate_of: int | None) -> tuple[str, ...]:
    flags: list[str] = []
    if profanity.matches(text):
        flags.append("profanity")
    if duplicate_of is not None:
        flags.append(f"duplicate:{duplicate_of}")
    return tuple(flags)


def merge_flags(old: tuple[str, ...], profanity: ProfanityFilter, text: str) -> tuple[str, ...]:
    """Recompute the profanity flag after an edit; keep the others."""
    kept = [f for f in old if f != "profanity"]
    if profanity.matches(text):
        kept.insert(0, "profanity")
    return tuple(kept)


STAFF_EDITABLE = ("status", "text", "starred", "queue_position", "segment_id", "note")


@dataclass(frozen=True)
class Patch:
    """A validated staff change; ``None`` fields are left as they are."""

    status: Status | None = None
    text: str | None = None
    starred: bool | None = None
    queue_position: int | None = None
    segment_id: str | None = None
    set_segment: bool = False
    note: str | None = None
    set_note: bool = False


def parse_patch(body: Mapping[str, Any], limits: Limits,
                segment_ids: Iterable[str] | None = None) -> tuple[Patch, int]:
    """Validate a PATCH body; return the patch and the version it is based on."""
    version = body.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise InvalidQuestion("version_required", "version")
    unknown = set(body) - set(STAFF_EDITABLE) - {"version"}
    if unknown:
        raise InvalidQuestion("unknown_field", sorted(unknown)[0])
    status = None
    if "status" in body:
        try:
            status = Status(body["status"])
        except ValueError as e:
            raise InvalidQuestion("status_invalid", "status") from e
    text = clean_text(body["text"], limits) if "text" in body else None
    starred = body.get("starred")
    if starred is not None and not isinstance(starred, bool):
        raise InvalidQuestion("starred_invalid", "starred")
    position = body.get("queue_position")
    if position is not None and (isinstance(position, bool) or not isinstance(position, int)
                                 or position < 1):
        raise InvalidQuestion("queue_position_invalid", "queue_position")
    return Patch(
        status=status,
        text=text,
        starred=starred,
        queue_position=position,
        segment_id=clean_segment(body.get("segment_id"), segment_ids),
        set_segment="segment_id" in body,
        note=clean_note(body.get("note")),
        set_note="note" in body,
    ), version
