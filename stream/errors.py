"""The exception tree of the service.

    ProfilesError
    ├── ConfigError        bad setting or CLI argument (one-line message, no traceback)
    ├── BrokerError        Kafka broker unreachable or refused a request
    ├── StateError         a snapshot is corrupt, or was made by another model
    └── DataError          an input file is missing or unreadable

Third-party errors are chained with ``raise ... from exc``.
"""

from __future__ import annotations


class ProfilesError(Exception):
    """Root of every error this service raises on purpose."""


class ConfigError(ProfilesError):
    """A setting or command-line argument is invalid."""


class BrokerError(ProfilesError):
    """The Kafka broker could not be reached or refused a request."""


class StateError(ProfilesError):
    """Persisted state cannot be used (corrupt, or from another model)."""


class DataError(ProfilesError):
    """An input file is missing or unreadable."""
