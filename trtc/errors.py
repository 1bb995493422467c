"""The one error type of trtc.

Every failure a user can cause is a `TrtcError` carrying what is wrong, where
(file, node, tensor, option) and what to do about it.  The CLI prints it as one
line and exits with `exit_code` (2 for user errors, 1 for failed checks).
"""

from __future__ import annotations

USER_ERROR = 2
CHECK_FAILED = 1


class TrtcError(Exception):
    """A failure with a one-line message meant for the user."""

    exit_code = USER_ERROR

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"; {self.hint}"
        return " ".join(text.split())

    def as_json(self) -> dict[str, str | int | None]:
        """The error as `--json` prints it: the same fields as the one line, kept apart for programs."""
        return {"error": " ".join(self.message.split()), "where": self.where, "hint": self.hint,
                "exit_code": self.exit_code}


class CheckFailed(TrtcError):
    """A check the user asked for did not pass (e.g. a mismatch in `compare`)."""

    exit_code = CHECK_FAILED
