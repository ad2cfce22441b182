"""Results pages (docs/results/*.md) grow by dated entries: the script that measured a table appends it, headed by
the date, the command, the code's commit and the hardware, below the entries already there (never over them).

    append_entry(Path("docs/results/timing.md"), "the default run against NCL", lines)
"""
from __future__ import annotations

import datetime
import shlex
import sys
from pathlib import Path
from typing import List, Optional


def command_line(argv: Optional[List[str]] = None) -> str:
    """The command that is running, as a user would type it: "python experiments/x.py --flag value"."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0])
    try:
        script = script.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return " ".join(["python", str(script), *map(shlex.quote, argv[1:])])


def hardware(device: str = "cpu", threads: Optional[int] = None) -> str:
    """"GPU: NVIDIA H100 …" on CUDA, else "CPU: AMD EPYC (family 25 model 17)[, n thread(s)]"."""
    import torch

    from pyro_ncl.backends import cpu_model
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}; CPU: {cpu_model()}"
    return f"CPU: {cpu_model()}" + (f", {threads} thread(s)" if threads else "")


def append_entry(page: Path, title: str, lines: List[str], command: Optional[str] = None, device: str = "cpu",
                 threads: Optional[int] = None) -> str:
    """Append "## DATE: title", then the command, the commit and the hardware, then ``lines``, to ``page``
    (created with a title line when missing); returns the entry's text."""
    from pyro_ncl.provenance import provenance, short

    entry = "\n".join([f"## {datetime.date.today().isoformat()}: {title}", "",
                       f"Command: `{command or command_line()}`  ", f"Code: {short(provenance())}  ",
                       f"{hardware(device, threads)}", "", *lines]).rstrip() + "\n"
    page = Path(page)
    page.parent.mkdir(parents=True, exist_ok=True)
    text = page.read_text() if page.exists() else f"# {page.stem.replace('_', ' ').capitalize()}\n"
    page.write_text(text.rstrip() + "\n\n" + entry)
    return entry
