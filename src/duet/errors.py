"""User-facing errors: the CLI prints them as one line and exits non-zero."""


class DuetError(Exception):
    """A mistake in the user's input or files; shown without a traceback."""


class InputError(DuetError):
    """Bad input file: the message names the file, the line and what was expected."""

    def __init__(self, path: object, line: int | None, message: str):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path, self.line = path, line


class ArtifactError(DuetError):
    """A dataset, run or bundle that is missing, tampered with, or of the wrong kind."""
