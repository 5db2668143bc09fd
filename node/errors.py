"""The node's exception hierarchy. Messages are written for the person who has to act on them."""

from __future__ import annotations


class SegnodeError(Exception):
    """Base of every error the node raises on purpose."""


class ConfigError(SegnodeError, ValueError):
    """A setting is missing or out of range; the message names the key and what is allowed."""


class InvalidUID(SegnodeError, ValueError):
    """A DICOM UID is missing, malformed or unfit to be used in a file name."""


class JobNotFound(SegnodeError, LookupError):
    """No job with that id."""


class InvalidTransition(SegnodeError, ValueError):
    """A job state change the state machine does not allow."""


class SpoolFull(SegnodeError, OSError):
    """Free disk space is below the configured floor."""


class StoreUnavailable(SegnodeError, ConnectionError):
    """The job store's database cannot be reached or refuses us (server down, wrong database or user)."""


class ComputeUnavailable(SegnodeError, ConnectionError):
    """The configured compute backend (a Ray cluster) cannot be reached at start-up."""


class SendError(SegnodeError):
    """Delivery of a result failed; `retryable` tells the outbox whether to try again."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable
