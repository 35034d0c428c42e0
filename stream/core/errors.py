"""The exception tree: every error this code base raises on purpose derives from one root.

    ProfilesError
    ├── ConfigError        a bad setting or command-line argument (CLI: one line, exit 2)
    │   └── PolicyConfigError   a bad bandit policy spec (also a ValueError)
    ├── DataError          an input file is missing, unreadable or holds nothing usable
    ├── BrokerError        the Kafka broker cannot be reached, or refused a request
    ├── StateError         persisted state cannot be used: corrupt, made by another model, or
    │                      by an incompatible version (the message says what to run)
    ├── EncoderError       an encoder cannot be loaded, or a model directory is invalid
    ├── IndexShapeError    vectors or queries of the wrong shape or non-finite (also a ValueError)
    └── QueryError         an API request cannot be answered; ``status`` is its HTTP status
        ├── BadRequest       400: a malformed parameter
        ├── NotFound         404: unknown user or arm
        └── Unavailable      503: not ready, or a peer cannot be reached

The CLI prints any ``ProfilesError`` as one line (``profiles: error: ...``) and exits 2 for a
``ConfigError``, 1 otherwise.  Third-party errors are chained with ``raise ... from exc``.
Pure module: it imports nothing, so every layer (``encoder`` and ``index`` included) can use it.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "BrokerError",
    "ConfigError",
    "DataError",
    "EncoderError",
    "IndexShapeError",
    "NotFound",
    "PolicyConfigError",
    "ProfilesError",
    "QueryError",
    "StateError",
    "Unavailable",
]


class ProfilesError(Exception):
    """Root of every error this service raises on purpose."""


class ConfigError(ProfilesError):
    """A setting or command-line argument is invalid."""


class PolicyConfigError(ConfigError, ValueError):
    """A bandit policy name or parameter is invalid."""


class DataError(ProfilesError):
    """An input file is missing or unreadable."""


class BrokerError(ProfilesError):
    """The Kafka broker could not be reached or refused a request."""


class StateError(ProfilesError):
    """Persisted state cannot be used (corrupt, from another model or version)."""


class EncoderError(ProfilesError):
    """An encoder could not be loaded; the message is a single line."""


class IndexShapeError(ProfilesError, ValueError):
    """Vectors or queries have the wrong shape, dtype or non-finite values."""


class QueryError(ProfilesError):
    """An API request that cannot be answered; ``status`` is the HTTP status to answer with."""

    status = 500


class BadRequest(QueryError):
    status = 400


class NotFound(QueryError):
    status = 404


class Unavailable(QueryError):
    status = 503
