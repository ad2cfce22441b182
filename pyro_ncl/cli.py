"""The command line of every script: ``build_parser`` (a ``--kebab-case`` flag per ``Config`` field, with its help,
choices and default, booleans as ``--flag/--no-flag``), ``config_from_args`` (the dataclass defaults < the dataset's
recipe < ``--preset`` < explicit flags; the method's parts come from ``Config.resolved``), one-line errors
(``OneLineParser``, ``exit_on_bad_input``, ``os_error_line``), and the flag reference of docs/usage.md generated from
the fields' own metadata (``flag_reference``; ``python -m pyro_ncl.cli --reference docs/usage.md`` rewrites it).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from pyro_ncl.config import FIELD_NAMES, FIELDS, GROUPS, Config, _choices, _field_type


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (``error: ...``) with exit status 2, no usage;
    with ``raise_errors`` set, a ValueError instead (to check a command line without running it)."""

    raise_errors = False

    def error(self, message: str):
        if self.raise_errors:
            raise ValueError(message)
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def os_error_line(err: OSError) -> str:
    """An OSError (a full disk, an unreadable file) as one line: what went wrong and, where known, the file."""
    return f"{err.strerror or err}{f': {err.filename}' if err.filename else ''}"


def exit_on_bad_input(main: Callable[[Any], Any], args: Any, bad_input: Tuple[type, ...] = (ValueError,)) -> Any:
    """``main(args)`` for a script's ``__main__``: bad input (``bad_input`` errors, or an OSError such as an
    unwritable folder) ends as one line on stderr (``error: ...``) with exit status 2, no traceback."""
    try:
        return main(args)
    except bad_input as err:
        print(f"error: {err}", file=sys.stderr)
    except OSError as err:
        print(f"error: {os_error_line(err)}", file=sys.stderr)
    sys.exit(2)


def split_run_args(argv=None) -> Tuple[List[str], List[str]]:
    """A launcher's command line (``frontier.py``, ``sweep.py``, ``timing.py``) split at its first ``--``: (its own
    flags, the flags passed on to every ``run_svi.py`` run); ``sys.argv[1:]`` when ``argv`` is None."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def parse_launcher_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """A launcher's own flags parsed by ``parser``, with the flags after ``--`` as ``args.run_args``
    (``split_run_args``)."""
    own, run_args = split_run_args(argv)
    args = parser.parse_args(own)
    args.run_args = run_args
    return args


def run_script(main: Callable[[Any], Any], parser: argparse.ArgumentParser, argv=None) -> Any:
    """A script's ``__main__``: parse its command line and ``main(args)``, with a run's bad input (settings, a
    missing dataset, a foreign checkpoint) as one line on stderr and exit status 2, an interrupt as exit status 130."""
    from pyro_ncl.checkpoint import CheckpointError
    from pyro_ncl.data import DatasetNotFound

    try:
        return exit_on_bad_input(main, parser.parse_args(argv), bad_input=(ValueError, DatasetNotFound,
                                                                          CheckpointError))
    except KeyboardInterrupt:
        sys.exit(130)


def int_at_least(low: int, high: Optional[int] = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in [low, high] (a one-line parser error naming the flag otherwise)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}" if high is None
                                             else f"must lie in [{low}, {high}], got {value}")
        return value
    return parse


def build_parser(choices: Optional[Dict[str, list]] = None, description: str = "") -> argparse.ArgumentParser:
    """argparse from the Config fields: ``--kebab-case`` flags, booleans as ``--flag/--no-flag``; ``--help`` lists
    each field's choices (registered names; ``choices`` maps field names to other lists). Defaults are None so that
    explicit flags are known; the values are checked by ``Config.validate``."""
    parser = OneLineParser(description=description)
    parser.add_argument("--preset", default=None, help="YAML of settings: a name from experiments/presets/ or a path "
                                                       "(over the dataset's recipe, under explicit flags)")
    choices = choices or {}
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"]
        names = choices.get(f.name) or (_choices(f.name, f.metadata["choices"])[1] if "choices" in f.metadata else None)
        if names:
            help_text += f"; one of: {', '.join(map(str, names))}"
        help_text += f" (default: {f.metadata.get('shown', f.default)})"
        if f.type in ("bool", bool, "Optional[bool]"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(str(f.type).replace("Optional[", "").rstrip("]"), str)
            parser.add_argument(flag, type=kind, default=None, help=help_text, metavar=f.name.upper())
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults < the dataset's recipe < preset < explicit flags (``pyro_ncl.presets``; the method's parts come in
    between, from ``Config.resolved``)."""
    from pyro_ncl.presets import load_preset, with_recipe

    values: Dict[str, Any] = {}
    if getattr(args, "preset", None):
        values.update(load_preset(args.preset))
    values.update({k: v for k, v in vars(args).items() if k in FIELD_NAMES and v is not None})
    return Config(**with_recipe(values))


# ---------------------------------------------------------------- the flag reference (docs/usage.md)
BEGIN, END = "<!-- flags:begin -->", "<!-- flags:end -->"
GROUP_TITLES = {"data": "Data", "parts": "Parts (the method and its model)", "optimisation": "Optimisation",
                "gate": "The gate", "evaluation": "Evaluation", "runtime": "Runtime and outputs"}


def flag_reference() -> str:
    """Markdown: per group of ``config.GROUPS``, a table of its flags (``--kebab-case``, or ``--flag/--no-flag``),
    defaults and help with their choices, from the fields' own metadata: what ``--help`` says."""
    lines = []
    for group, names in GROUPS.items():
        lines += [f"### {GROUP_TITLES[group]}", "", "| flag | default | what it sets |", "|---|---|---|"]
        for name in names:
            f = FIELDS[name]
            kind, _ = _field_type(f)
            flag = "--" + name.replace("_", "-")
            flag = f"{flag} / --no-{flag[2:]}" if kind is bool else f"{flag} {name.upper()}"
            help_text = f.metadata["help"].replace("%%", "%")
            if "choices" in f.metadata:
                help_text += f"; one of: {', '.join(map(str, _choices(name, f.metadata['choices'])[1]))}"
            default = f.metadata.get("shown", f.default)
            lines.append(f"| `{flag}` | {default} | {help_text.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_reference(path: Path) -> bool:
    """Rewrite the flag reference between ``BEGIN`` and ``END`` in ``path``; True when it changed."""
    text = Path(path).read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path} has no {BEGIN} … {END} section for the flag reference")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{flag_reference()}{END}{tail}"
    Path(path).write_text(new)
    return new != text


if __name__ == "__main__":
    parser = OneLineParser(description="Write the flag reference of docs/usage.md from Config's metadata.")
    parser.add_argument("--reference", required=True, metavar="PAGE.md", help="the page to rewrite (its "
                                                                               "flags:begin/end section)")
    args = parser.parse_args()
    changed = exit_on_bad_input(lambda a: write_reference(Path(a.reference)), args)
    print(f"{args.reference}: flag reference {'rewritten' if changed else 'unchanged'}")
