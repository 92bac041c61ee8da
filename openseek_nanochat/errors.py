"""Errors a user can act on. `where` names the file, line or field, so a failed job says exactly what to fix."""


class InputError(Exception):
    """Bad input: a missing or unreadable file, a malformed record, a wrong column, an empty result."""

    def __init__(self, message: str, where: str | None = None):
        super().__init__(f"{where}: {message}" if where else message)
        self.message = message
        self.where = where
