"""French first, English second: language choice and the server's own sentences.

Page strings live in ``static/i18n/{fr,en}.json`` (shared with the browser
scripts); API error sentences live here, keyed by error code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LANGUAGES = ("fr", "en")
LANG_COOKIE = "lang"

ERRORS: Mapping[str, Mapping[str, str]] = {
    "unknown_theme": {
        "fr": "Choisissez l'un des trois thèmes du débat.",
        "en": "Choose one of the three debate themes."},
    "text_required": {
        "fr": "Écrivez votre question avant de l'envoyer.",
        "en": "Write your question before sending it."},
    "text_too_long": {
        "fr": "Votre question est trop longue : {max} caractères au plus.",
        "en": "Your question is too long: {max} characters at most."},
    "text_control_characters": {
        "fr": "Votre question contient des caractères invisibles non autorisés.",
        "en": "Your question contains invisible characters that are not allowed."},
    "author_invalid": {
        "fr": "Le nom doit être un texte.", "en": "The name must be text."},
    "author_too_long": {
        "fr": "Votre nom est trop long : {max} caractères au plus.",
        "en": "Your name is too long: {max} characters at most."},
    "author_control_characters": {
        "fr": "Votre nom contient des caractères non autorisés.",
        "en": "Your name contains characters that are not allowed."},
    "segment_invalid": {
        "fr": "Cette séquence n'existe pas.", "en": "This segment does not exist."},
    "note_invalid": {
        "fr": "La note doit être un texte de 2 000 caractères au plus.",
        "en": "The note must be text of at most 2,000 characters."},
    "version_required": {
        "fr": "Indiquez la version de la question sur laquelle porte la modification.",
        "en": "Give the version of the question this change is based on."},
    "unknown_field": {
        "fr": "Ce champ ne peut pas être modifié : {field}.",
        "en": "This field cannot be changed: {field}."},
    "status_invalid": {
        "fr": "Statut inconnu.", "en": "Unknown status."},
    "starred_invalid": {
        "fr": "« starred » doit valoir true ou false.", "en": "“starred” must be true or false."},
    "queue_position_invalid": {
        "fr": "La position dans la file doit être un entier à partir de 1.",
        "en": "The queue position must be a whole number from 1."},
    "sort_invalid": {
        "fr": "Tri inconnu : « popular » ou « recent ».",
        "en": "Unknown sort: “popular” or “recent”."},
    "merge_target_required": {
        "fr": "Indiquez le numéro de la question dans laquelle fusionner.",
        "en": "Give the number of the question to merge into."},
    "question_id_required": {
        "fr": "Indiquez le numéro de la question à mettre à l'antenne.",
        "en": "Give the number of the question to put on air."},
    "question_not_found": {
        "fr": "Cette question n'existe pas.", "en": "This question does not exist."},
    "stale_version": {
        "fr": "Un autre modérateur a modifié cette question entre-temps : voici la version "
              "actuelle.",
        "en": "Another moderator changed this question in the meantime: here is the current "
              "version."},
    "cannot_merge": {
        "fr": "Ces questions ne peuvent pas être fusionnées.",
        "en": "These questions cannot be merged."},
    "not_publishable": {
        "fr": "Une question rejetée ou fusionnée ne peut pas passer à l'antenne.",
        "en": "A rejected or merged question cannot go on air."},
    "rate_limited": {
        "fr": "Vous avez envoyé beaucoup de questions : réessayez dans {minutes} min.",
        "en": "You have sent many questions: try again in {minutes} min."},
    "vote_rate_limited": {
        "fr": "Trop de votes d'un coup : réessayez dans {minutes} min.",
        "en": "Too many votes at once: try again in {minutes} min."},
    "unknown_segment": {
        "fr": "Cette séquence n'existe pas dans le conducteur.",
        "en": "This segment is not in the running order."},
    "invalid_seconds": {
        "fr": "Indiquez une durée en secondes, entre -3600 et 3600, différente de 0.",
        "en": "Give a duration in seconds, between -3600 and 3600, other than 0."},
    "programme_not_live": {
        "fr": "Aucune séquence n'est à l'antenne.", "en": "No segment is on air."},
    "programme_already_started": {
        "fr": "L'émission a déjà commencé.", "en": "The show has already started."},
    "programme_ended": {
        "fr": "L'émission est terminée.", "en": "The show has ended."},
    "programme_changed": {
        "fr": "Le conducteur vient de changer : réessayez.",
        "en": "The running order just changed: try again."},
    "unknown_feed": {
        "fr": "Cette source vidéo n'existe pas.", "en": "This video source does not exist."},
    "sdp_required": {
        "fr": "Envoyez une offre SDP (Content-Type: application/sdp).",
        "en": "Send an SDP offer (Content-Type: application/sdp)."},
    "invalid_token": {
        "fr": "Jeton de la source manquant ou invalide (Authorization: Bearer …).",
        "en": "The feed's token is missing or invalid (Authorization: Bearer …)."},
    "invalid_sdp": {
        "fr": "L'offre SDP est illisible.", "en": "The SDP offer cannot be read."},
    "unsupported_media": {
        "fr": "L'offre SDP ne contient aucun flux audio ou vidéo dans un codec pris en charge.",
        "en": "The SDP offer has no audio or video stream in a supported codec."},
    "session_not_found": {
        "fr": "Cette session n'existe pas ou est terminée.",
        "en": "This session does not exist or has ended."},
    "trickle_not_supported": {
        "fr": "Ce serveur ne prend en charge ni le trickle ICE ni le redémarrage ICE (RFC 9725 "
              "le permet) : mettez toutes les candidates dans l'offre, ou recommencez par un "
              "nouveau POST.",
        "en": "This server supports neither trickle ICE nor ICE restarts (RFC 9725 allows "
              "this): put every candidate in the offer, or start again with a new POST."},
    "watch_rate_limited": {
        "fr": "Trop de connexions au direct depuis votre adresse : réessayez dans {seconds} s.",
        "en": "Too many connections to the live stream from your address: try again in "
              "{seconds} s."},
    "no_frame": {
        "fr": "Aucune image reçue de cette source pour l'instant.",
        "en": "No picture received from this source yet."},
    "cue_text_required": {
        "fr": "Écrivez le message à envoyer au site.",
        "en": "Write the message to send to the site."},
    "cue_text_too_long": {
        "fr": "Le message est trop long : {max} caractères au plus.",
        "en": "The message is too long: {max} characters at most."},
    "cue_text_control_characters": {
        "fr": "Le message contient des caractères invisibles non autorisés.",
        "en": "The message contains invisible characters that are not allowed."},
    "video_error": {
        "fr": "La vidéo n'a pas pu traiter cette demande.",
        "en": "The video service could not handle this request."},
    "invalid_json": {
        "fr": "Le corps de la requête doit être un objet JSON.",
        "en": "The request body must be a JSON object."},
    "unsupported_media_type": {
        "fr": "Envoyez le corps en JSON (Content-Type: application/json).",
        "en": "Send the body as JSON (Content-Type: application/json)."},
    "not_authenticated": {
        "fr": "Connectez-vous avec un compte de l'équipe.",
        "en": "Sign in with a staff account."},
    "forbidden": {
        "fr": "Votre rôle ne permet pas cette action.",
        "en": "Your role does not allow this action."},
    "csrf_failed": {
        "fr": "Jeton de sécurité manquant ou invalide : rechargez la page.",
        "en": "Security token missing or invalid: reload the page."},
    "bad_credentials": {
        "fr": "Nom d'utilisateur ou mot de passe incorrect.",
        "en": "Wrong user name or password."},
    "too_many_attempts": {
        "fr": "Trop d'essais infructueux : réessayez dans {minutes} min.",
        "en": "Too many failed attempts: try again in {minutes} min."},
    "not_found": {
        "fr": "Cette adresse n'existe pas.", "en": "This address does not exist."},
    "method_not_allowed": {
        "fr": "Cette méthode n'est pas permise ici.", "en": "This method is not allowed here."},
    "request_too_large": {
        "fr": "La requête est trop volumineuse.", "en": "The request is too large."},
    "internal_error": {
        "fr": "Une erreur interne s'est produite ; l'équipe technique est prévenue.",
        "en": "An internal error occurred; the technical team has been told."},
    "service_unavailable": {
        "fr": "Le service est momentanément indisponible.",
        "en": "The service is temporarily unavailable."},
    "viewers_full": {
        "fr": "Le direct est complet pour le moment : nouvel essai dans quelques secondes.",
        "en": "The live stream is full for now: trying again in a few seconds."},
    "invalid_unicode": {
        "fr": "Le texte envoyé contient des caractères qui ne sont pas de l'Unicode valide.",
        "en": "The text sent contains characters that are not valid Unicode."},
    "invalid_frame": {
        "fr": "Message Socket.IO illisible.", "en": "Unreadable Socket.IO message."},
    "cross_origin": {
        "fr": "Cette action doit venir des pages de ce site.",
        "en": "This action must come from this site's own pages."},
    "storage_unavailable": {
        "fr": "L'enregistrement est momentanément impossible : réessayez dans quelques "
              "secondes, rien n'a été perdu de ce qui était déjà enregistré.",
        "en": "Saving is impossible for the moment: try again in a few seconds; nothing "
              "already saved was lost."},
    "overloaded": {
        "fr": "Beaucoup de monde en même temps : réessayez dans quelques secondes, "
              "rien n'a été enregistré de cette demande.",
        "en": "Many people at once: try again in a few seconds; nothing of this request "
              "was saved."},
    "question_not_stored": {
        "fr": "Cette question n'a pas pu être enregistrée telle quelle : modifiez-la et "
              "renvoyez-la.",
        "en": "This question could not be saved as it is: change it and send it again."},
    "too_many_sessions": {
        "fr": "Trop de lecteurs du direct ouverts depuis votre adresse : fermez-en un ou "
              "réessayez dans quelques secondes.",
        "en": "Too many players of the live stream are open from your address: close one or "
              "try again in a few seconds."},
    "video_elsewhere": {
        "fr": "Ce processus ne sert pas la vidéo (--no-video) : le proxy doit envoyer /whip, "
              "/whep et /api/feeds au processus vidéo.",
        "en": "This process does not serve video (--no-video): the proxy must send /whip, "
              "/whep and /api/feeds to the video process."},
}


def message(code: str, lang: str, **params: Any) -> str:
    entry = ERRORS.get(code) or ERRORS["internal_error"]
    text = entry.get(lang) or entry["fr"]
    try:
        return text.format(**params)
    except (KeyError, IndexError, ValueError):
        return text


def pick_language(query: str | None, cookie: str | None, accept: str | None) -> str:
    """``?lang=`` wins, then the cookie, then Accept-Language; French by default."""
    for candidate in (query, cookie):
        if candidate in LANGUAGES:
            return candidate
    if accept:
        ranked: list[tuple[float, str]] = []
        for part in accept.split(","):
            bits = part.strip().split(";q=")
            tag = bits[0].split("-")[0].strip().lower()
            try:
                q = float(bits[1]) if len(bits) > 1 else 1.0
            except ValueError:
                q = 0.0
            if tag in LANGUAGES and q > 0:  # q=0 means "not this one"
                ranked.append((q, tag))
        if ranked:
            return max(ranked, key=lambda r: r[0])[1]
    return "fr"


class Catalog:
    """Page strings for each language, read once at start-up."""

    def __init__(self, directory: Path) -> None:
        self.strings: dict[str, dict[str, str]] = {}
        for lang in LANGUAGES:
            path = directory / f"{lang}.json"
            self.strings[lang] = json.loads(path.read_text("utf-8")) if path.exists() else {}

    def get(self, lang: str) -> dict[str, str]:
        return self.strings.get(lang) or self.strings["fr"]

    def t(self, lang: str, key: str) -> str:
        return self.get(lang).get(key) or self.strings["fr"].get(key) or key
