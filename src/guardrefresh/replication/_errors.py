"""Errors of fleet replication."""

from __future__ import annotations


class ReplicationError(Exception):
    """Base of the errors below; ``str()`` is a one-line reason a person can act on."""


class EngineUnavailableError(ReplicationError):
    """The fleet's PostgreSQL database cannot be reached or refused the work.

    Nothing of a write that raised this was committed unless the message says the
    outcome is unknown (the connection broke while committing).
    """


class NotAppliedError(ReplicationError):
    """A write was committed to the fleet, but this replica did not apply it in time."""


class UnsupportedRecordError(ReplicationError):
    """The database holds rules in a record format this build does not read."""


class PasswordFileError(ReplicationError):
    """The --replication-password-file cannot be used."""
