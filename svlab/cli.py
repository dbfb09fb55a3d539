"""The ``svlab`` command: one subcommand per concept, each registered by its own module."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from svlab.train.loop import TrainingError

COMMAND_MODULES = [
    "svlab.data",
    "svlab.tour",
    "svlab.train",
    "svlab.memory.projection",
    "svlab.evaluate",
    "svlab.export",
]


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that ends each option with its default, unless it has none (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.default in (None, False, argparse.SUPPRESS)
                or "default" in text):
            return text
        return f"{text} (default: %(default)s)".lstrip()


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help, and its subcommands' help, shows every default."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(**kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every module's subcommands.

    >>> "data" in build_parser().format_help()
    True
    """
    parser = CommandParser(
        prog="svlab",
        description="Memory-efficient training and compression of speaker-verification models.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``svlab`` with ``argv`` (default: the command line) and return its exit status.

    A user's error (svlab's own errors are ``ValueError`` subclasses: bad audio, corpus, config
    or checkpoint; a missing file; training that cannot go on) prints one line naming it and
    returns 2; Ctrl-C returns 130; neither prints a traceback. A warning prints as one line,
    ``svlab COMMAND: warning: ...``, without Python's source line.

    >>> main(["data", "check", "/no/corpus"])
    2
    """
    args = build_parser().parse_args(argv)

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"svlab {args.command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, TrainingError) as err:
        print(f"svlab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"svlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
