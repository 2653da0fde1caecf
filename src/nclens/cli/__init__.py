"""The ``nclens`` command line (typer).

Every module of this package that defines ``register(app: typer.Typer) -> None`` adds
its sub-commands to the one application; the modules are found by name, so each feature keeps its
command beside its own code and no central list has to be edited.

Example:
    $ nclens --help
    $ nclens measure features.npz --json metrics.json
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

app = typer.Typer(
    name="nclens",
    help="Measure, explain and exploit neural collapse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from nclens import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the nclens version and exit.", callback=_print_version, is_eager=True
    ),
) -> None:
    """nclens: measure, explain and exploit neural collapse (see `nclens COMMAND --help`)."""


def _register_all() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_all()


def main() -> None:
    """Entry point of the ``nclens`` console script."""
    app()


if __name__ == "__main__":
    main()
