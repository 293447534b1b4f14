#!/usr/bin/env python3
"""Stand-in SLURM commands for tests: sbatch runs the job on this machine, squeue/sacct report it.

Each command (sbatch, squeue, sacct, sinfo, scontrol, srun, sacctmgr, sshare, scancel) is a link to this
file. srun starts its command once per node (``--nodes N``), all on this machine, as the tasks of a
multi-node allocation; ``scontrol show hostnames`` names every node ``localhost``. State lives in $FAKE_SLURM_DIR: submissions.jsonl (one line per sbatch call: its argv), and one
<jobid>.state file per job (RUNNING, then COMPLETED or FAILED).
"""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

STATE = Path(os.environ.get("FAKE_SLURM_DIR", "/tmp/fake_slurm"))


def option(args, name):
    """The value of --name=V or --name V (None when absent)."""
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


def sbatch(args):
    STATE.mkdir(parents=True, exist_ok=True)
    jobid = 1000 + len(list(STATE.glob("*.state")))
    script = sys.stdin.read() if "/dev/stdin" in args else None
    with open(STATE / "submissions.jsonl", "a") as f:
        f.write(json.dumps({"jobid": jobid, "argv": args, "script": script}) + "\n")
    command = option(args, "--wrap") or script
    output = (option(args, "--output") or option(args, "-o") or f"slurm-{jobid}.out").replace("%j", str(jobid))
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    (STATE / f"{jobid}.state").write_text("RUNNING")
    env = {**os.environ, "SLURM_JOB_ID": str(jobid), "SLURM_JOBID": str(jobid)}
    runner = (f"sh -c {shlex.quote(command)} > {shlex.quote(output)} 2>&1; "
              f"if [ $? -eq 0 ]; then echo COMPLETED; else echo FAILED; fi > {STATE}/{jobid}.state")
    subprocess.Popen(["sh", "-c", runner], env=env, start_new_session=True, stdin=subprocess.DEVNULL)
    print(jobid)


def states():
    return {p.stem: p.read_text().strip() for p in STATE.glob("*.state")}


def srun(args):
    """Run the command once per node (--nodes N, one task each) with SLURM_NODEID/PROCID set; all on this machine."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 1 if "=" in args[i] else 2                  # every srun option the workflow uses takes a value
    command, nodes = args[i:], int(option(args, "--nodes") or option(args, "-N") or 1)
    tasks = [subprocess.Popen(command, env={**os.environ, "SLURM_NODEID": str(n), "SLURM_PROCID": str(n),
                                            "SLURM_LOCALID": "0", "SLURM_NNODES": str(nodes)})
             for n in range(nodes)]
    sys.exit(max(task.wait() for task in tasks))


def scontrol(args):
    if args[:2] == ["show", "hostnames"]:                 # every node of this stand-in cluster is this machine
        print("\n".join(["localhost"] * int(os.environ.get("SLURM_NNODES", "1"))))
    else:
        print("MinJobAge = 300 sec\nMaxArraySize = 1001\nPartitionName=gpu\n   MaxTime=UNLIMITED")


def main():
    name, args = Path(sys.argv[0]).name, sys.argv[1:]
    if name == "sbatch":
        sbatch(args)
    elif name == "sacct":
        print("\n".join(f"{j}|{s}" for j, s in states().items()))
    elif name == "squeue":
        print("\n".join(f"{j}|{s}" for j, s in states().items() if s == "RUNNING"))
    elif name == "sinfo":
        print("PARTITION\ngpu*")
    elif name == "scontrol":
        scontrol(args)
    elif name == "srun":
        srun(args)
    elif name in ("sacctmgr", "sshare"):
        print("my_account")
    elif name == "scancel":
        pass
    else:
        sys.exit(f"fake_slurm: unknown command {name}")


if __name__ == "__main__":
    main()
