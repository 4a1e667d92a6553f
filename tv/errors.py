"""What can go wrong with feeds, viewers and SDP, in domain terms."""

from __future__ import annotations


class TvError(Exception):
    code = "tv_error"


class UnknownFeed(TvError):
    """No configured source has this id."""

    code = "unknown_feed"


class InvalidSdp(TvError):
    """The offer cannot be parsed as SDP (HTTP 400)."""

    code = "invalid_sdp"


class UnsupportedMedia(TvError):
    """The offer parses but asks for media this server cannot use (HTTP 422).

    WHIP needs sendonly H.264 or VP8 video (and Opus audio, if any); WHEP needs
    recvonly H.264 video (and Opus audio, if any).
    """

    code = "unsupported_media"


class SessionNotFound(TvError):
    """No publishing or viewing session has this id (HTTP 404)."""

    code = "session_not_found"


class ViewersFull(TvError):
    """This process serves as many viewers as ``[video] max_viewers`` allows (HTTP 503).

    One more would slow the programme down for everyone watching already.
    """

    code = "viewers_full"


class TooManySessions(TvError):
    """This address holds as many viewing sessions as ``[video] viewers_per_address``
    allows (HTTP 429): one visitor must not take every place."""

    code = "too_many_sessions"
