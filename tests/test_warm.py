"""pvs.warm, the warm-start launcher: a job through it behaves as the plain ``python -m`` process (output, exit
codes, tracebacks, signals, the same training metrics); a client killed by SIGKILL takes its job with it; the
server is reused and never caches the job's own modules; without a usable runtime dir it runs the module cold."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

PROBE = '''
import os, sys
print("loaded pvs modules:", sorted(m for m in sys.modules if m == "pvs" or m.startswith("pvs.")))
mode = sys.argv[1]
if mode == "echo":
    data = sys.stdin.read()
    print("argv", sys.argv[1:], "cwd", os.getcwd(), "env", os.environ.get("PROBE_VAR"))
    print("stdin", repr(data))
    print("to stderr", file=sys.stderr)
    print("path0", sys.path[0] == os.getcwd(), "main", __name__, os.path.basename(sys.argv[0]))
elif mode == "exit":
    print("exiting", sys.argv[2])
    sys.exit(int(sys.argv[2]))
elif mode == "message":
    sys.exit("a message to stderr")
elif mode == "raise":
    raise ValueError("boom")
elif mode == "sleep":
    open(sys.argv[2], "w").write(str(os.getpid()))
    import time
    time.sleep(60)
elif mode == "version":
    import probe_version
    print("version", probe_version.VERSION)
'''


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """An environment with a private runtime dir, a short idle timeout and a module dir on PYTHONPATH."""
    base = tmp_path_factory.mktemp("warm")
    mods = base / "mods"
    mods.mkdir()
    (mods / "warmprobe.py").write_text(PROBE)
    environ = dict(os.environ, PVS_WARM_DIR=str(base / "run"), PVS_WARM_IDLE="60", PROBE_VAR="x y",
                   PYTHONPATH=os.pathsep.join([str(mods), str(ROOT / "workflow")]))
    environ.pop("SLURM_JOB_ID", None)
    yield {"environ": environ, "mods": mods, "run": base / "run", "cwd": base}
    subprocess.run([sys.executable, "-m", "pvs.warm", "--stop"], env=environ, timeout=30)


def run(env, *args, warm=True, stdin="", **kw):
    prefix = [sys.executable, "-m", "pvs.warm"] if warm else [sys.executable, "-m"]
    return subprocess.run([*prefix, *args], env=kw.pop("environ", env["environ"]), cwd=env["cwd"], input=stdin,
                          capture_output=True, text=True, timeout=300, **kw)


def server_pid(env) -> int:
    return int(next(env["run"].glob("*.pid")).read_text())


def same(env, *args, stdin=""):
    cold, warm = run(env, *args, warm=False, stdin=stdin), run(env, *args, stdin=stdin)
    assert (warm.returncode, warm.stdout) == (cold.returncode, cold.stdout)
    return cold, warm


def test_a_job_gives_the_plain_process_output(env):
    cold, warm = same(env, "warmprobe", "echo", "--flag", "a b", stdin="some input\n")
    assert warm.stderr == cold.stderr == "to stderr\n"
    assert "loaded pvs modules: []" in warm.stdout and "stdin 'some input\\n'" in warm.stdout
    assert "env x y" in warm.stdout and "path0 True main __main__ warmprobe.py" in warm.stdout


def test_a_real_cli_gives_the_same_output(env):
    cold, warm = same(env, "pvs.train", "--help")
    assert "--arm" in warm.stdout
    cold, warm = same(env, "pvs.train", "--arm", "nonsense")
    assert warm.returncode == 2 and warm.stderr == cold.stderr


@pytest.mark.parametrize("args, code", [(("exit", "3"), 3), (("exit", "0"), 0), (("message",), 1), (("raise",), 1)])
def test_exit_codes_and_exceptions_propagate(env, args, code):
    cold, warm = same(env, "warmprobe", *args)
    assert warm.returncode == code
    if args[0] == "raise":
        assert warm.stderr.startswith("Traceback") and warm.stderr.splitlines()[-1] == "ValueError: boom"
        assert cold.stderr.splitlines()[-1] == "ValueError: boom"
    else:
        assert warm.stderr == cold.stderr


def _gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _start_sleeper(env, tmp_path):
    pid_file = tmp_path / "job.pid"
    client = subprocess.Popen([sys.executable, "-m", "pvs.warm", "warmprobe", "sleep", str(pid_file)],
                              env=env["environ"], cwd=env["cwd"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return client, int(pid_file.read_text())


def test_sigkill_of_the_client_kills_the_job(env, tmp_path):
    client, job = _start_sleeper(env, tmp_path)
    assert job != client.pid
    client.kill()
    client.wait()
    assert _gone(job, 5), "the job outlived its SIGKILLed client"


def test_sigterm_is_forwarded_and_the_client_dies_by_it(env, tmp_path):
    client, job = _start_sleeper(env, tmp_path)
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=10) == -signal.SIGTERM
    assert _gone(job, 5)


def test_a_second_job_reuses_the_server_and_rereads_edited_modules(env):
    version = env["mods"] / "probe_version.py"
    version.write_text("VERSION = 1\n")
    assert run(env, "warmprobe", "version").stdout.splitlines()[-1] == "version 1"
    first = server_pid(env)
    version.write_text("VERSION = 'two'\n")  # another size: the .pyc check cannot be fooled by the same mtime
    assert run(env, "warmprobe", "version").stdout.splitlines()[-1] == "version two"
    assert server_pid(env) == first


def test_a_stale_socket_is_replaced(env):
    run(env, "warmprobe", "exit", "0")
    pid = server_pid(env)
    os.kill(pid, signal.SIGKILL)  # leaves its socket file behind
    assert _gone(pid, 5)
    assert next(env["run"].glob("*.sock")).exists()
    result = run(env, "warmprobe", "exit", "4")
    assert result.returncode == 4 and "no warm server" not in result.stderr
    assert server_pid(env) != pid


def test_falls_back_to_a_cold_run_without_a_runtime_dir(env, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    environ = dict(env["environ"], PVS_WARM_DIR=str(blocker / "run"))  # under a file: cannot be created
    result = run(env, "warmprobe", "exit", "5", environ=environ)
    assert result.returncode == 5 and result.stdout == "loaded pvs modules: []\nexiting 5\n"
    assert result.stderr.count("pvs.warm: no warm server") == 1 and "cold start" in result.stderr


def test_help(env):
    result = subprocess.run([sys.executable, "-m", "pvs.warm", "--help"], env=env["environ"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "usage: python -m pvs.warm" in result.stdout


def test_a_training_job_gives_the_same_metrics_both_ways(env, byte_splits, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "parent": {"arch": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}},
        "threads_per_job": 1, "prune": {"methods": ["sparsegpt"], "calib_seq_len": 32},
        "train": {"seq_len": 32, "batch_size": 4, "lr": 0.003, "eval_every_tokens": 256, "eval_windows": 4}}))
    results = {}
    for warm in (False, True):
        out = tmp_path / f"out_{warm}"
        done = run(env, "pvs.train", "--arm", "parent", "--tokens", "1024", "--data", str(byte_splits), "--out",
                   str(out), "--config", str(config), "--ckpt", f"{out}.ckpt", "--threads", "1", warm=warm)
        assert done.returncode == 0, done.stderr
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        results[warm] = [{k: v for k, v in r.items() if k not in ("tok_per_s", "seconds")} for r in lines]
        results[warm].append((out / "model.safetensors").read_bytes())
    assert len(results[True]) > 2 and results[True] == results[False]


def test_the_launcher_is_warm_for_local_single_process_jobs_only():
    from pvs.config import validate_config
    from pvs.resources import launcher

    cpu = validate_config({"device": "cpu"})
    assert launcher(cpu, "child", "python", warm=True) == "python -m pvs.warm"
    assert launcher(cpu, "child", "python") == "python"
    cuda = validate_config({"device": "cuda", "cluster": {"gpus": {"child": 4}}})
    assert "torch.distributed.run" in launcher(cuda, "child", "python", warm=True)
    assert validate_config({})["warm_start"] is True


def test_the_rules_start_local_jobs_warm_unless_warm_start_is_false(tmp_path):
    def commands(*extra):
        done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "2", "--directory",
                               str(tmp_path), "-s", str(ROOT / "Snakefile"), "--configfile",
                               str(ROOT / "configs/smoke.yaml"), *extra], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return [line for line in (done.stdout + done.stderr).splitlines() if " -m pvs." in line]

    warm = commands()
    for stage in ("train", "prune", "evaluate"):
        assert any(f"-m pvs.warm -m pvs.{stage} " in line for line in warm), stage
    assert not any("-m pvs.warm -m pvs.data" in line or "-m pvs.warm -m pvs.report" in line for line in warm)
    assert not any("pvs.warm" in line for line in commands("--config", "warm_start=False"))
