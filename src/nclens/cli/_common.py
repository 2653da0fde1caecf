"""What every ``nclens`` command shares: one plain-text error path.

:func:`fail` prints ``error: <message>`` to stderr and exits with code 2. The message is printed
verbatim — never interpreted as rich markup — so a path like ``runs/[train]`` or a value like
``[nan, 1]`` reaches the user as it is. :func:`user_errors` turns the errors that mean bad input
(ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
MemoryError from a refused allocation, ImportError of an optional extra, a busy run folder, ...)
into :func:`fail`; anything else is a bug and keeps its traceback.

Example:
    >>> from typer.testing import CliRunner
    >>> import typer
    >>> app = typer.Typer()
    >>> @app.command()
    ... def main() -> None:
    ...     with user_errors():
    ...         raise ValueError("bad path a[/]b.npz")
    >>> r = CliRunner().invoke(app, [])
    >>> r.exit_code, r.output.strip()
    (2, 'error: bad path a[/]b.npz')
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer

__all__ = ["fail", "user_errors", "USER_ERRORS"]

#: Exceptions that mean "the input is wrong" (a clear message, exit code 2), not "nclens has a bug".
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    KeyError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    MemoryError,
    ImportError,
    FloatingPointError,
)


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]  # KeyError's str() adds quotes around the message
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc) or type(exc).__name__


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` to stderr (verbatim, no markup) and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def user_errors(extra: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Turn bad-input exceptions raised in the block into :func:`fail` (exit code 2)."""
    from nclens.core.io import RunFolderBusy

    try:
        yield
    except (*USER_ERRORS, RunFolderBusy, *extra) as exc:
        fail(_message(exc))
    except OSError as exc:  # a full disk, a read-only folder: say which file and why
        fail(_message(exc))
