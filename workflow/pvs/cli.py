"""Command-line helpers shared by the ``python -m pvs.<module>`` entry points."""
from __future__ import annotations

import argparse


def doc_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A parser whose description is the module docstring's first paragraph and whose epilog is the rest."""
    first, _, rest = doc.partition("\n\n")
    return argparse.ArgumentParser(prog=prog, description=first, epilog=rest or None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def guarded(prog: str, errors: tuple[type[BaseException], ...], run, *args) -> int:
    """Run ``run(*args)``; an error of the given kinds becomes one line on stderr naming ``prog`` and exit code 2
    (the problem is named, nothing half-written is left: every stage writes its outputs atomically or last)."""
    import sys

    try:
        run(*args)
    except errors as e:
        print(f"{prog}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0
