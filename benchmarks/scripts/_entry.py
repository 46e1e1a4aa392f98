"""The question-named entry points of ``benchmarks/`` (``gaussian_bridge.py``, ``likelihoods.py``,
``forecasting.py``, ``cost.py``) run the scripts of this folder: ``ENTRY COMMAND [ARGS]`` runs
``scripts/SCRIPT PREFIX... ARGS`` as its own ``__main__``, so each script's options and ``--help``
are its own."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def dispatch(doc: str, commands: dict[str, tuple[str, list[str], str]], argv: list[str] | None = None) -> int:
    """Run ``commands[argv[0]]``: ``(script, prefix arguments, one-line summary)``; with no command
    or ``-h``, print ``doc`` and the commands. An unknown command is one line and exit status 2."""
    argv = sys.argv[1:] if argv is None else argv
    prog = Path(sys.argv[0]).name
    if not argv or argv[0] in ("-h", "--help"):
        print(doc.strip() + "\n\ncommands:")
        for name, (script, prefix, summary) in commands.items():
            print(f"  {name:14s} {summary}  (scripts/{' '.join([script, *prefix])})")
        print(f"\n{prog} COMMAND --help: the command's own options")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"{prog}: error: unknown command {name!r}; choose from {', '.join(commands)}", file=sys.stderr)
        return 2
    script, prefix, _ = commands[name]
    path = HERE / script
    sys.argv = [str(path), *prefix, *rest]
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return 0
