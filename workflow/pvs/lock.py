"""Continue after a hard kill: remove Snakemake's stale lock, but only when no Snakemake works here.

    python -m pvs.lock                          # check the current directory; unlock if the lock is stale
    python -m pvs.lock --directory DIR --configfile configs/smoke.yaml

A Snakemake run holds a lock in ``.snakemake/locks/`` of its working directory. A run killed with
SIGKILL (the OOM killer, a node crash, ``kill -9``) cannot release it, and the next run stops with
Snakemake's LockException until ``snakemake --unlock``. The Makefile targets call this module first: it
looks for a live Snakemake process working in the same directory (by ``/proc/<pid>/cwd`` and the
``--directory``/``-d`` argument of its command line); if one is found the lock is live and is left
alone (exit 1, naming the process); otherwise a lock left behind is stale and ``snakemake --unlock`` removes
it (the same Snakefile and config file). Jobs that were running resume from their checkpoints when the
workflow runs again (training, Sheared-LLaMA's mask learning, tokenization); ``--rerun-incomplete`` (the
default profile) re-runs what was cut off. Without ``/proc`` (not Linux) nothing is removed and the exact
command to type is printed.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pvs.cli import doc_parser


def lock_files(directory: Path) -> list[Path]:
    """The lock files Snakemake left in ``directory`` (empty when it holds no lock)."""
    locks = directory / ".snakemake" / "locks"
    return sorted(locks.glob("*.lock")) if locks.is_dir() else []


def _argument_directory(argv: list[str], cwd: Path) -> Path:
    """The working directory a Snakemake command line runs in: its --directory/-d, else its cwd."""
    for i, arg in enumerate(argv):
        if arg in ("--directory", "-d") and i + 1 < len(argv):
            return (cwd / argv[i + 1]).resolve()
        if arg.startswith("--directory="):
            return (cwd / arg.split("=", 1)[1]).resolve()
    return cwd


def _is_snakemake(argv: list[str]) -> bool:
    """A Snakemake main process (not one of its jobs, whose command lines are the rules' shell commands)."""
    head = [Path(a).name for a in argv[:3]]
    return any(h == "snakemake" for h in head) or argv[1:3] == ["-m", "snakemake"]


def snakemake_processes(directory: Path) -> list[tuple[int, str]]:
    """(pid, command line) of every live Snakemake process whose working directory is ``directory``.

    Raises OSError when processes cannot be listed (no /proc)."""
    proc, me, found = Path("/proc"), os.getpid(), []
    if not proc.is_dir():
        raise OSError("no /proc to list processes")
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            argv = [a for a in (entry / "cmdline").read_bytes().decode(errors="replace").split("\0") if a]
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:                                   # gone meanwhile, or not ours to read
            continue
        if argv and _is_snakemake(argv) and _argument_directory(argv, cwd) == directory:
            found.append((int(entry.name), " ".join(argv)))
    return found


def unlock_if_stale(directory: Path, snakefile: Path, configfile: str | None) -> int:
    """0 when no lock is held or a stale one was removed; 1 when another Snakemake works here; 2 on errors."""
    directory = directory.resolve()
    if not lock_files(directory):
        return 0
    command = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--directory", str(directory), "--unlock"]
    if configfile:
        command += ["--configfile", configfile]
    try:
        live = snakemake_processes(directory)
    except OSError as e:
        print(f"pvs.lock: {directory} is locked and live Snakemake processes cannot be checked ({e}); if none "
              f"runs there, type: {' '.join(command)}", file=sys.stderr)
        return 2
    if live:
        print(f"pvs.lock: {directory} is locked by a running Snakemake (pid {live[0][0]}: {live[0][1]}); "
              "leaving the lock alone", file=sys.stderr)
        return 1
    print(f"pvs.lock: stale Snakemake lock in {directory} (no Snakemake runs there); unlocking", file=sys.stderr)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stdout[-2000:] + result.stderr[-2000:], file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m pvs.lock", __doc__)
    parser.add_argument("--directory", default=".", help="the workflow's working directory (default: here)")
    parser.add_argument("--snakefile", default=str(Path(__file__).resolve().parents[2] / "Snakefile"),
                        help="the Snakefile (default: this checkout's)")
    parser.add_argument("--configfile", help="the study config the run used (unlocking parses the workflow)")
    args = parser.parse_args(argv)
    return unlock_if_stale(Path(args.directory), Path(args.snakefile), args.configfile)


if __name__ == "__main__":
    sys.exit(main())
