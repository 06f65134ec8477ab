"""The project's own error types for bad input. The CLIs (cli.main) print these as one `error:` line
and exit 2; any other exception is a bug here and keeps its traceback.

Every module's input-error class derives from InputError (records.RecordsError, decoding's,
evaluation's, prompts', ...), so `except InputError` catches exactly "the user must fix something".
"""


class InputError(ValueError):
    """Bad input: an argument, a file's contents, a palette, a value name. The message names the
    input and, where there is one, the fix."""


class NotFoundError(InputError, FileNotFoundError):
    """Something the user named is not available here: a file, a folder, a model or data set that is
    not cached offline. The message names it and the fix."""


class ExistsError(InputError, FileExistsError):
    """An output the user named exists already and would be replaced; the message names the
    `--overwrite` flag (or another fix)."""


class UnknownNameError(InputError, KeyError):
    """A name (value, model alias, ...) that no registry holds; the message lists the known names."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
