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


def refuse_given(options: dict[str, object], message: str) -> None:
    """A one-line DuetError naming the options given (not None) that do not apply; `message` has a {} for them."""
    given = [flag for flag, value in options.items() if value is not None]
    if given:
        raise DuetError(message.format(", ".join(given)))


def option_error(exc: Exception) -> DuetError:
    """A pydantic ValidationError of an options model as one line naming the option (`--max-devices: ...`)."""
    err = exc.errors()[0]  # type: ignore[attr-defined]
    name = f"--{str(err['loc'][0]).replace('_', '-')}: " if err["loc"] else ""
    return DuetError(f"{name}{err['msg']}")
