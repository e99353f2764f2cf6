"""Errors raised by annotation services on untrusted input. Views turn them into 400s, commands into exit 1."""


class InvalidInput(ValueError):
    """Input was rejected and nothing was written. ``location`` says where (e.g. "line 12", "tiers[1]")."""

    def __init__(self, message: str, *, location: str = "") -> None:
        self.message = message
        self.location = location
        super().__init__(f"{location}: {message}" if location else message)


class RankingInvalid(InvalidInput):
    """A submitted ranking does not cover exactly the prompt's samples, or the lease is not the caller's."""


class ImportRejected(InvalidInput):
    """An import file was rejected; nothing from it was imported."""


class LeaseLost(InvalidInput):
    """The lease expired and its slot went to another labeler: the request conflicts with the state (409)."""

    status_code = 409


class NotAllowed(PermissionError):
    """The user's role in the project does not allow this action."""
