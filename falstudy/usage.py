"""Usage errors of the command line as one line each, with the closest valid name suggested.

Typer (0.20+) raises its own copies of click's exception classes and older ones raise click's,
so both are recognised by their ``exit_code`` and ``format_message`` rather than by class.
"""

from __future__ import annotations

import difflib
import re

_NO_SUCH_COMMAND = re.compile(r"No such command '(.+?)'")
_NOT_ONE_OF = re.compile(r"'([^']+)' is not one of (.+?)\.?$")


# the arguments after ``falstudy`` of this invocation (kept here, not in falstudy.cli, which
# `python -m falstudy.cli` imports twice)
INVOKED: list[str] = []


def invoked_args() -> list[str]:
    """What this invocation was given after ``falstudy`` (``--debug`` removed), for resume hints."""
    return list(INVOKED)


def usage_error_types() -> tuple[type[BaseException], ...]:
    """click's and typer's base classes of the errors a parser raises for bad input."""
    found: list[type[BaseException]] = []
    try:
        import click

        found.append(click.ClickException)
    except ImportError:
        pass
    import typer

    if hasattr(typer, "TyperException"):
        found.append(typer.TyperException)
    return tuple(found)


def is_help_screen(err: BaseException) -> bool:
    """``falstudy data`` (no subcommand) raises an error whose message is the help text."""
    return type(err).__name__ == "NoArgsIsHelpError"


def usage_line(err: BaseException) -> str:
    """``falstudy train: no such option --stepz (did you mean --steps?); see falstudy train --help``."""
    ctx = getattr(err, "ctx", None)
    where = ctx.command_path if ctx is not None else "falstudy"
    name = type(err).__name__
    if name == "NoSuchOption":
        option = err.option_name
        known = _option_names(ctx) if ctx is not None else list(getattr(err, "possibilities", None) or [])
        msg = f"no such option {option}{_suggest(option, known)}"
    else:
        msg = err.format_message().strip()
        found = _NO_SUCH_COMMAND.search(msg)
        if found and ctx is not None and hasattr(ctx.command, "list_commands"):
            msg = f"no such command {found.group(1)!r}{_suggest(found.group(1), ctx.command.list_commands(ctx))}"
        else:
            msg = msg.replace("Value error, ", "")
            choice = _NOT_ONE_OF.search(msg)
            if choice:
                msg = msg.rstrip(".") + _suggest(choice.group(1), re.findall(r"'(.+?)'", choice.group(2)))
            msg = msg[0].lower() + msg[1:] if msg[:1].isupper() and not msg[1:2].isupper() else msg
    msg = " ".join(msg.split())  # one line, whatever the parser wrapped
    return f"{where}: error: {msg.rstrip('.')}; see {where} --help"


def _option_names(ctx) -> list[str]:
    names: list[str] = []
    for param in ctx.command.get_params(ctx):
        names += [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]
    return [n for n in names if n.startswith("-")]


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def version_line() -> str:
    """``falstudy 0.1.0 (git 1a2b3c4, uncommitted changes)``: the package and the commit it runs from."""
    from falstudy import __version__
    from falstudy.provenance import _git

    version = __version__
    commit = _git("rev-parse", "--short", "HEAD")
    if commit is None:
        return f"falstudy {version} (not a git checkout)"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"falstudy {version} (git {commit}{', uncommitted changes' if dirty else ''})"
