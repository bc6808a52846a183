"""User-facing errors.

Anything a user can fix (a bad manifest row, a config key, a missing file) is raised as a ``UserError``;
the CLI prints its message on one line and exits non-zero without a traceback. Programming errors stay
ordinary exceptions so that they keep their traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input, reported without a traceback."""

    exit_code = 2


class ConfigError(UserError):
    """A config file or override that does not fit the schema."""


class ManifestError(UserError):
    """A manifest that cannot be used; ``problems`` lists every bad row found at once."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems or [])
        if self.problems:
            shown = self.problems[:50]
            more = len(self.problems) - len(shown)
            message = message + "\n  " + "\n  ".join(shown) + (f"\n  ... and {more} more" if more else "")
        super().__init__(message)
