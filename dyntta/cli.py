"""Conventions shared by every command-line tool (``dyntta-train``, ``python -m export``, ...).

- Every flag has help text and ``--help`` shows its default: build parsers with :class:`ArgumentParser`
  (sub-command parsers inherit it), whose formatter appends ``(default: ...)``.
- One exit-code rule (:func:`run`): 0 success; 2 a usage error (argparse's own, or :class:`UsageError`
  raised after parsing, e.g. two flags that exclude each other); 1 a runtime failure the user can act on
  (missing file, bad data, unreachable server: ``OSError``, ``ValueError``, :class:`CommandError`),
  printed as one ``prog: error: ...`` line, never a traceback. ``DYNTTA_TRACEBACK=1`` re-raises instead,
  for debugging. Anything else is a bug and keeps its traceback.

Torch-free, like :mod:`dyntta.contract`, so ``--help`` stays fast when a command imports its heavy
dependencies inside its handler.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT
TRACEBACK_ENV = "DYNTTA_TRACEBACK"


class UsageError(Exception):
    """The command line is wrong in a way argparse cannot see (exit 2, with the usage line)."""


class CommandError(Exception):
    """A runtime failure with a message for the user (exit 1)."""


#: Exceptions reported as one line with exit code 1. OSError covers missing files, unreadable images
#: (Pillow's UnidentifiedImageError) and refused connections; ValueError covers bad values in files.
RUNTIME_ERRORS: tuple[type[BaseException], ...] = (CommandError, OSError, ValueError)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks (usage examples) and appends each flag's default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        # no "(default: None)" or "(default: False)" noise for optional values and switches
        if action.default is None or action.default is False or isinstance(action, argparse._HelpAction):
            return help_text
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with :class:`HelpFormatter`; its sub-command parsers are of this class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def fail(parser: argparse.ArgumentParser, error: BaseException, code: int) -> int:
    if code == EXIT_USAGE:
        parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {error}", file=sys.stderr)
    return code


def run(
    parser: argparse.ArgumentParser,
    handler: Callable[[argparse.Namespace], int | None],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv``, call ``handler(args)`` and map the outcome to an exit code (see the module doc)."""
    args = parser.parse_args(argv)  # exits 2 with argparse's message on a usage error
    try:
        code = handler(args)
    except UsageError as error:
        return fail(parser, error, EXIT_USAGE)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RUNTIME_ERRORS as error:
        if os.environ.get(TRACEBACK_ENV):
            raise
        return fail(parser, error, EXIT_FAILURE)
    return EXIT_OK if code is None else code


def undocumented_flags(parser: argparse.ArgumentParser) -> list[str]:
    """Flags (of the parser and its sub-commands) without help text: the conventions test lists them."""
    missing: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += [f"{name} {flag}" for flag in undocumented_flags(sub)]
        elif not isinstance(action, argparse._HelpAction) and not action.help:
            missing.append("/".join(action.option_strings) or action.dest)
    return missing


__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "ArgumentParser",
    "CommandError",
    "HelpFormatter",
    "UsageError",
    "fail",
    "run",
    "undocumented_flags",
]
