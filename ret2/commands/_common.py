"""What every ret2 command shares: one flag vocabulary, help that shows each default, usage lines that show the
command to type, and errors that end in one line.

Every option is spelled with dashes (`--data-root`) and also accepted with underscores (`--data_root`). A failing
command prints one line, `<command>: error: <what is wrong>`, and exits with status 1; `--traceback` shows the full
traceback instead. Work already finished (cache shards, checkpoints, written files) stays on disk.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

TRACEBACK_FLAG = "--traceback"


def command_name() -> str:
    """What the user typed to start this process: `ret2-eval-mbeir`, `python -m eval.mbeir`, `python hub_upload.py`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return f"python -m {spec.name.removesuffix('.__main__')}"
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "ret2"
    return f"python {name}" if name.endswith(".py") else name


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and appends `(default: X)` to every option's help whose default is not None,
    0 and False included; a switch (`nargs=0`, off unless given) shows none, an empty list shows `none`."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower() or default is None or default is argparse.SUPPRESS or action.nargs == 0
            or not action.option_strings
        ):  # fmt: skip
            return text
        shown = (" ".join(map(str, default)) or "none") if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {shown})"


def normalize_flags(argv: Sequence[str]) -> list[str]:
    """`--data_root=x` -> `--data-root=x`: option names with underscores become the dashed spelling."""
    out = []
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name, sep, value = token.partition("=")
            token = name.replace("_", "-") + sep + value
        out.append(token)
    return out


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` with the conventions above: dashed or underscored flags, defaults in the help, the
    command's real name in the usage line, and `--traceback`."""

    def __init__(self, description: str | None = None, **kwargs):
        kwargs.setdefault("prog", command_name())
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(description=description, **kwargs)
        self.add_argument(TRACEBACK_FLAG, action="store_true", help="on an error, show the full traceback")

    def add_argument(self, *names, **kwargs):
        if names and names[0].startswith("-") and not kwargs.get("help"):
            raise ValueError(f"option {names[0]} has no help text; every ret2 flag says what it does")
        return super().add_argument(*names, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(normalize_flags(sys.argv[1:] if args is None else args), namespace)


def configure_logging() -> None:
    """Command logging: ret2's INFO messages (what is cached, what is skipped), other libraries' warnings only."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("ret2").setLevel(logging.INFO)
    logging.getLogger("__main__").setLevel(logging.INFO)  # a command started as `python -m ret2.eval.m2kr`


def run_cli(main: Callable[[list[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Run a command's `main(argv)` and exit: 0 (or the int it returns) on success; on an error, one line on stderr
    and status 1, or the traceback with `--traceback`; 130 on Ctrl-C."""
    argv = list(sys.argv[1:] if argv is None else argv)
    show_traceback = TRACEBACK_FLAG in normalize_flags(argv)
    try:
        result = main(argv)
    except KeyboardInterrupt:
        print(f"{command_name()}: interrupted; finished work is kept on disk", file=sys.stderr)
        sys.exit(130)
    except Exception as error:  # noqa: BLE001 - a command's last line names what went wrong
        if show_traceback:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{command_name()}: error: {message} (rerun with {TRACEBACK_FLAG} for the traceback)", file=sys.stderr)
        sys.exit(1)
    sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)
