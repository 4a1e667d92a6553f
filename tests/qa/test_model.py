"""The pure question rules of qa/model.py: no server, no database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from qa.errors import InvalidQuestion
from qa.model import (
    BUILTIN_PROFANITY,
    DuplicateIndex,
    Limits,
    Patch,
    ProfanityFilter,
    Question,
    Status,
    clean_author,
    clean_segment,
    clean_text,
    clean_theme,
    flags_for,
    fold,
    iso,
    merge_flags,
    parse_patch,
    similarity,
    staff_view,
    tokens,
    viewer_view,
)

LIMITS = Limits(text_max=500, author_max=60)


def code_of(call, *args) -> str:
    with pytest.raises(InvalidQuestion) as caught:
        call(*args)
    return caught.value.code


# --- clean_text --------------------------------------------------------------

def test_text_is_trimmed_and_nfc_normalised():
    assert clean_text("  Pourquoi le cafe\u0301 ?\n\n", LIMITS) == "Pourquoi le café ?"


def test_text_line_breaks_are_kept_but_tidied():
    assert clean_text("Un\r\nDeux\rTrois", LIMITS) == "Un\nDeux\nTrois"
    assert clean_text("Un\n\n\n\n\nDeux", LIMITS) == "Un\n\nDeux"
    assert clean_text("Un\tDeux", LIMITS) == "Un\tDeux"


@pytest.mark.parametrize("value", [None, 42, ["texte"], "", "   ", "\n\t\n", "\u00a0\u2003"])
def test_text_is_required(value):
    assert code_of(clean_text, value, LIMITS) == "text_required"


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\x7f", "\u0085",
                                  "\u202e", "\u202a", "\u2066", "\u2069"])
def test_text_with_control_characters_is_refused(char):
    assert code_of(clean_text, f"Une question {char}piégée ?", LIMITS) == (
        "text_control_characters")


def test_text_length_counts_characters_after_normalisation():
    assert clean_text("é" * 500, LIMITS) == "é" * 500
    # 1000 code points before NFC, 500 characters after: what the viewer typed.
    assert clean_text("e\u0301" * 500, LIMITS) == "é" * 500
    with pytest.raises(InvalidQuestion) as caught:
        clean_text("é" * 501, LIMITS)
    assert caught.value.code == "text_too_long"
    assert caught.value.params["max"] == 500
    assert clean_text("x" * 20, Limits(text_max=20)) == "x" * 20
    assert code_of(clean_text, "x" * 21, Limits(text_max=20)) == "text_too_long"


def test_text_limit_applies_after_trimming():
    assert clean_text("   " + "a" * 500 + "   ", LIMITS) == "a" * 500


# --- clean_author ------------------------------------------------------------

@pytest.mark.parametrize("value", [None, "", "   "])
def test_author_is_optional(value):
    assert clean_author(value, LIMITS) is None


def test_author_is_trimmed_and_normalised():
    assert clean_author("  Le\u0301a  ", LIMITS) == "Léa"
    assert clean_author("A" * 60, LIMITS) == "A" * 60


@pytest.mark.parametrize("value, code", [
    (42, "author_invalid"),
    ({"name": "Léa"}, "author_invalid"),
    ("A" * 61, "author_too_long"),
    ("Léa\nDupont", "author_control_characters"),
    ("Léa\tDupont", "author_control_characters"),
    ("Léa\x00", "author_control_characters"),
    ("\u202eaéL", "author_control_characters"),
])
def test_bad_author_is_refused(value, code):
    assert code_of(clean_author, value, LIMITS) == code


def test_theme_and_segment_rules():
    themes = ("cooperatives", "growth", "fair-price")
    assert clean_theme("fair-price", themes) == "fair-price"
    for bad in ("Growth", "sport", "", None, 1):
        assert code_of(clean_theme, bad, themes) == "unknown_theme"
    assert clean_segment(None) is None and clean_segment("") is None
    assert clean_segment("duplex-afrique-2") == "duplex-afrique-2"
    for bad in ("Duplex", "-x", "a b", "../x", "a" * 65, 3):
        assert code_of(clean_segment, bad) == "segment_invalid"


# --- fold, tokens, similarity ---------------------------------------------------

def test_fold_drops_case_accents_and_punctuation():
    assert fold("Élève À L'ÉCOLE, cœur!") == "eleve a l ecole coeur"
    assert fold("ŒUVRE — «Straße»   n°1") == "oeuvre strasse n 1"
    assert fold("?!…") == ""


def test_tokens_keep_meaningful_words_only():
    assert tokens("Comment les coopératives fixent-elles le prix du cacao ?") == {
        "cooperatives", "fixent", "elles", "prix", "cacao"}
    assert tokens("COMMENT LES COOPERATIVES fixent elles le PRIX du cacao") == tokens(
        "Comment les coopératives fixent-elles le prix du cacao ?")
    assert tokens("What is the price of the coffee?") == {"price", "coffee"}
    assert tokens("Et le, la, les ? À y a-t-il ?") == frozenset()


def test_similarity_is_jaccard_of_word_sets():
    a = frozenset({"cooperatives", "fixent", "prix", "cacao"})
    assert similarity(a, a) == 1.0
    assert similarity(a, frozenset({"cooperatives", "fixent", "prix", "cafe"})) == 3 / 5
    assert similarity(a, frozenset({"salaires"})) == 0.0
    assert similarity(a, frozenset()) == 0.0
    assert similarity(frozenset(), frozenset()) == 0.0


# --- profanity --------------------------------------------------------------

BUILTIN = ProfanityFilter.from_list(BUILTIN_PROFANITY)


@pytest.mark.parametrize("text", [
    "C'est quoi ce putain de prix ?", "PUTAIN !", "Quel con.", "Espèce d'enculé",
    "espece de batard", "Why the fuck is coffee so cheap?", "This is bullshit",
    "Ta gueule", "Va te faire foutre, le marché",
])
def test_builtin_list_flags_french_and_english(text):
    assert BUILTIN.matches(text)


@pytest.mark.parametrize("text", [
    "Le contrat des coopératives est-il équitable ?", "Un conseil pour les producteurs ?",
    "La construction d'une filière", "Scunthorpe United", "Les dickens du marché",
    "Sa bitoniau ?", "Shiitake et commerce équitable", "Une question tout à fait polie.",
])
def test_no_false_hit_on_words_that_contain_a_listed_word(text):
    assert not BUILTIN.matches(text)


def test_custom_words_and_phrases_match_whole_words_only():
    custom = ProfanityFilter.from_list(["Zut", "hors sujet", "  ", "!!"])
    assert custom.words == {"zut"} and custom.phrases == ("hors sujet",)
    assert custom.matches("ZUT alors")
    assert custom.matches("C'est complètement hors-sujet !")
    assert not custom.matches("hors de sujet")
    assert not custom.matches("Zutique")
    assert not custom.matches("dehors sujets")


def test_flags_for_and_merge_flags():
    assert flags_for("Quel prix juste ?", BUILTIN, None) == ()
    assert flags_for("Quel putain de prix ?", BUILTIN, 7) == ("profanity", "duplicate:7")
    # After an edit the profanity flag follows the new text; the others stay.
    assert merge_flags(("profanity", "duplicate:7"), BUILTIN, "Quel prix ?") == ("duplicate:7",)
    assert merge_flags(("duplicate:7",), BUILTIN, "Quel con ?") == ("profanity", "duplicate:7")


# --- duplicates -------------------------------------------------------------

def test_duplicate_index_finds_near_identical_in_same_theme_only():
    index = DuplicateIndex(threshold=0.75)
    index.add(1, "growth", "Comment les coopératives fixent-elles le prix du cacao ?")
    index.add(2, "growth", "Quels salaires pour les cueilleurs de thé ?")

    assert index.best_match("growth", "comment les cooperatives fixent elles le prix du cacao") == 1
    assert index.best_match("fair-price", "Comment les coopératives fixent le prix du cacao ?") \
        is None
    assert index.best_match("growth", "Les salaires des producteurs de cacao ?") is None
    assert index.best_match("growth", "?") is None


def test_duplicate_threshold_is_inclusive():
    index = DuplicateIndex(threshold=0.75)
    index.add(1, "growth", "cacao cafe riz sucre")
    assert index.best_match("growth", "cacao cafe riz") == 1  # 3/4 == 0.75
    assert index.best_match("growth", "cacao cafe banane") is None  # 2/5
    assert DuplicateIndex(threshold=0.4).best_match("growth", "x") is None
    loose = DuplicateIndex(threshold=0.4)
    loose.add(1, "growth", "cacao cafe riz sucre")
    assert loose.best_match("growth", "cacao cafe banane") == 1


def test_duplicate_index_keeps_the_latest_questions_and_its_memory_flat():
    index = DuplicateIndex(threshold=0.75, capacity=100)
    for n in range(1000):
        index.add(n, "growth", f"question {n} sur le prix du cacao numero {n}")
    assert index.best_match("growth", "question 999 sur le prix du cacao numero 999") == 999
    assert index.best_match("growth", "question 900 sur le prix du cacao numero 900") == 900
    assert index.best_match("growth", "question 899 sur le prix du cacao numero 899") is None
    assert len(index) == 100  # the latest 100, not the 1,000 seen


def test_duplicate_index_prefers_the_most_similar_and_forgets_discarded():
    index = DuplicateIndex(threshold=0.5)
    index.add(1, "growth", "cacao cafe riz sucre banane")
    index.add(2, "growth", "cacao cafe riz sucre")
    index.add(3, "growth", "cacao cafe riz sucre")
    assert index.best_match("growth", "cacao cafe riz sucre") == 2  # first of the best
    index.discard(2)
    index.discard(3)
    assert index.best_match("growth", "cacao cafe riz sucre") == 1
    index.add(1, "growth", "bananes ananas")  # re-indexed after an edit
    assert index.best_match("growth", "cacao cafe riz sucre") is None
    assert index.best_match("growth", "ananas bananes") == 1
    index.discard(99)  # unknown ids are ignored


# --- staff patches ----------------------------------------------------------

def test_parse_patch_reads_every_editable_field():
    patch, version = parse_patch({
        "version": 3, "status": "approved", "text": "  Nouveau texte ?  ", "starred": True,
        "queue_position": 2, "segment_id": "debat-1", "note": " à garder "}, LIMITS)
    assert version == 3
    assert patch == Patch(status=Status.APPROVED, text="Nouveau texte ?", starred=True,
                          queue_position=2, segment_id="debat-1", set_segment=True,
                          note="à garder", set_note=True)


def test_parse_patch_tells_clearing_from_leaving_alone():
    patch, _ = parse_patch({"version": 1}, LIMITS)
    assert patch == Patch()
    patch, _ = parse_patch({"version": 1, "segment_id": None, "note": ""}, LIMITS)
    assert (patch.set_segment, patch.segment_id) == (True, None)
    assert (patch.set_note, patch.note) == (True, None)


@pytest.mark.parametrize("body, code", [
    ({}, "version_required"),
    ({"status": "approved"}, "version_required"),
    ({"version": "3"}, "version_required"),
    ({"version": True}, "version_required"),
    ({"version": 1.0}, "version_required"),
    ({"version": 1, "votes": 10}, "unknown_field"),
    ({"version": 1, "viewer_id": "x"}, "unknown_field"),
    ({"version": 1, "status": "published"}, "status_invalid"),
    ({"version": 1, "status": None}, "status_invalid"),
    ({"version": 1, "text": ""}, "text_required"),
    ({"version": 1, "text": "x" * 501}, "text_too_long"),
    ({"version": 1, "starred": "yes"}, "starred_invalid"),
    ({"version": 1, "queue_position": 0}, "queue_position_invalid"),
    ({"version": 1, "queue_position": True}, "queue_position_invalid"),
    ({"version": 1, "queue_position": "1"}, "queue_position_invalid"),
    ({"version": 1, "segment_id": "Bad Id"}, "segment_invalid"),
    ({"version": 1, "note": "x" * 2001}, "note_invalid"),
    ({"version": 1, "note": "bip\x07"}, "note_invalid"),
])
def test_parse_patch_refuses_bad_bodies(body, code):
    assert code_of(parse_patch, body, LIMITS) == code


def test_unknown_field_error_names_the_field():
    with pytest.raises(InvalidQuestion) as caught:
        parse_patch({"version": 1, "votes": 10}, LIMITS)
    assert caught.value.field == "votes"


# --- representations --------------------------------------------------------

def make_question(**changes) -> Question:
    fields = dict(
        id=7, theme="growth", text="Quel prix ?", author="Léa", segment_id=None,
        status=Status.APPROVED, starred=False, queue_position=None, on_air=False, votes=3,
        merged_into=None, flags=("profanity", "duplicate:2"), note="à voir",
        viewer_id="viewer-1234567890abcdef",
        created_at=datetime(2027, 5, 9, 12, 0, 0, 123456, tzinfo=UTC),
        updated_at=datetime(2027, 5, 9, 12, 5, tzinfo=UTC), version=4)
    fields.update(changes)
    return Question(**fields)


def test_viewer_view_hides_flags_note_and_viewer_id():
    question = make_question()
    staff, viewer = staff_view(question), viewer_view(question)
    assert staff["flags"] == ["profanity", "duplicate:2"] and staff["note"] == "à voir"
    assert staff["viewer_id"] == "viewer-1234567890abcdef"
    assert not {"flags", "note", "viewer_id"} & viewer.keys()
    assert viewer["created_at"] == "2027-05-09T12:00:00.123Z"
    assert viewer["updated_at"] == "2027-05-09T12:05:00.000Z"
    assert (viewer["status"], viewer["votes"], viewer["version"]) == ("approved", 3, 4)


def test_public_means_approved_or_answered_and_not_merged():
    assert make_question().is_public
    assert make_question(status=Status.ANSWERED).is_public
    assert not make_question(status=Status.PENDING).is_public
    assert not make_question(status=Status.REJECTED).is_public
    assert not make_question(merged_into=3).is_public
    assert make_question().duplicate_of == 2
    assert make_question(flags=()).duplicate_of is None


def test_iso_is_utc_with_z():
    assert iso(datetime(2027, 5, 9, 12, 0, tzinfo=UTC)) == "2027-05-09T12:00:00.000Z"
