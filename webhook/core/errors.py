"""Error types whose message is meant for a person: one line, no traceback, no secrets.

The CLI prints them as they are and exits non-zero; the web app maps them to a status.
"""


class ProjectError(Exception):
    """An expected failure, explained in its message."""


class ConfigError(ProjectError):
    """The environment is missing a variable or holds a value that cannot be used."""


class DatabaseUnavailable(ProjectError):
    """The database could not be reached or did not answer in time; try again later."""


class SchemaBehind(ProjectError):
    """The database lacks migrations this code relies on; run `migrate` first."""


class MigrationError(ProjectError):
    """A migration failed and was rolled back; the database is as it was before it."""
