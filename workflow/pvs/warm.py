"""Warm start: run ``python -m MODULE ARGS`` in a fork of a server that has torch, transformers, lm_eval ... imported.

    python -m pvs.warm pvs.train --arm parent ...      # same as: python -m pvs.train --arm parent ...
    python -m pvs.warm -m pvs.evaluate --model ...     # a leading -m is accepted (the rules' launcher string)
    python -m pvs.warm --stop                          # stop the runtime dir's servers (tests, benchmarks)

Every Snakemake job is its own process and, cold, spends seconds importing torch, transformers, lm_eval and
datasets before its 10-60 s of work. This client imports only the standard library (it starts in ~50 ms),
connects to a Unix socket of a server keyed by the interpreter, its options, sys.path, the versions of torch,
transformers and lm_eval, the uid and the environment variables that libraries read when they load
(thread counts: Snakemake sets OMP_NUM_THREADS etc. per job; HF_*, PYTHON*, CUDA_* ...), and starts one if none
answers (an fcntl lock: concurrent clients start only one). It sends {module, argv, cwd, environ} and its
stdin/stdout/stderr descriptors (SCM_RIGHTS) and exits with the job's exit status (a job killed by a signal:
the client kills itself with that signal, as the shell sees a plain process). Where the server cannot be
reached or started, the client runs the module in its own process (runpy, a cold start) and says so on stderr.
Under Slurm (SLURM_JOB_ID set) it runs in-process without a word: one job per allocation gains nothing.

The server preloads third-party modules only (never pvs: each job imports pvs afresh, so edits are picked up by
the next job; the child also drops the server's own ``pvs`` package from sys.modules). Per connection it forks a
handler, which forks the job: setsid (its own process group), chdir, os.environ replaced, the received
descriptors dup2'ed onto 0/1/2 and fresh sys.stdin/stdout/stderr, sys.argv and sys.path[0] as ``python -m``
sets them, signal handlers and the implicit RNGs as a fresh interpreter has them, then
``runpy.run_module(MODULE, run_name="__main__", alter_sys=True)``. SystemExit and uncaught exceptions become an
exit code as in a plain process (traceback on the job's stderr; KeyboardInterrupt: killed by SIGINT); non-daemon
threads are joined, atexit handlers run, stdio flushed, then os._exit. The handler reports the job's pid, then
its exit status, and watches the connection: EOF before the job ends (the client died, even by SIGKILL) kills
the job's whole process group. The client forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT to the job's process group.
The server reaps its handlers and, idle for PVS_WARM_IDLE seconds (default 120), removes its socket and exits;
a socket file whose server is gone is detected (connection refused) and replaced.

Environment: PVS_WARM_IDLE (seconds a server waits for its next job, default 120), PVS_WARM_DIR (the runtime
dir, default $XDG_RUNTIME_DIR/pvs-warm or /tmp/pvs-warm-<uid>; each server's log is <key>.log there),
PVS_WARM=0 (run in-process, cold), PVS_WARM_START_TIMEOUT (seconds to wait for a new server, default 300),
PVS_WARM_FORCE=1 (use the server under Slurm too).

Caveats.
  Fork safety: nothing in the server runs tensor ops or starts Python threads (tqdm's monitor thread starts with
    the first bar, in the job). torch's intra-op (OpenMP) pool is created lazily, so only in the job. The native
    threads that exist at fork time are OpenBLAS workers (numpy's and scipy's; none when OPENBLAS_NUM_THREADS=1,
    as Snakemake sets it for a 1-thread job) and jemalloc's background thread (pyarrow); both libraries
    re-initialise after fork through their pthread_atfork handlers. The server checks that it holds one
    Python thread before serving.
  Exit: the exit handlers the preloaded libraries registered run in every job, as in a plain process (torch's
    ~180 library finalizers: about 0.1 s of the warm start-up, more than cold because they touch shared pages).
  Memory: jobs share the server's imported pages copy-on-write; each job's own allocations are its own. One
    idle server (about 490 MB RSS measured, 345 MB of it anonymous) lives PVS_WARM_IDLE seconds after its last job.
  Determinism: a job computes what the plain process computes (tests/test_warm.py trains a tiny model through
    both paths and compares the metrics). The CLIs seed torch, numpy and random themselves; the child also
    re-seeds ``random`` and numpy's global RandomState from os.urandom and resets torch's default generator to its
    start-up seed, as a fresh interpreter has them. String hashing is the one shared thing: every job of a server
    has the server's hash seed (a plain process draws one per process unless PYTHONHASHSEED is set, which is
    part of the key), so set iteration order is the same across jobs; a result that depended on it would
    not be reproducible from plain processes either.
  Snakemake's kill semantics: Ctrl-C reaches the client with the terminal's process group (SIGINT) and is
    forwarded; Snakemake's own kill()/terminate() of a job signals the job's shell, which reaches the client no
    more and no less than it reached a plain python before; whatever kills the client (SIGKILL of the workflow's
    process group included) closes its connection, and the handler (woken by the EOF) kills the job's
    process group at once. The server (its own session) outlives the workflow by PVS_WARM_IDLE seconds, serving nothing.
  Cluster jobs are unaffected: the rules use the launcher for local single-process jobs only (warm_start, device
    not cuda, local execution); torchrun and srun launches are as before.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import sys
import time

KEY_PACKAGES = ("torch", "transformers", "lm_eval")
# environment variables that libraries read once, when they load or initialise (the server's apply to its jobs)
KEY_ENV_PREFIXES = ("OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "GOTO_", "VECLIB_", "NUMEXPR_", "PYTHON",
                    "HF_", "HUGGINGFACE", "TRANSFORMERS_", "TORCH", "PYTORCH_", "CUDA_", "TOKENIZERS_", "LD_",
                    "MALLOC_", "ARROW_", "TQDM_", "XDG_CACHE_HOME", "TMPDIR", "LC_", "LANG")
PRELOAD = (
    "numpy", "pandas", "scipy", "yaml", "jsonschema", "tqdm", "safetensors", "tokenizers", "torch", "torch.nn",
    "torch.nn.functional", "torch.distributed", "torch.utils.data", "transformers",
    "transformers.models.llama.modeling_llama", "transformers.models.llama.configuration_llama",
    "transformers.tokenization_utils_fast", "datasets", "lm_eval", "lm_eval.evaluator", "lm_eval.tasks",
    "lm_eval.api.model", "lm_eval.api.registry", "lm_eval.models.huggingface",
)
PRELOAD_ATTRS = ("transformers:LlamaForCausalLM", "transformers:LlamaConfig", "transformers:AutoTokenizer",
                 "transformers:PreTrainedTokenizerFast", "lm_eval:simple_evaluate")
TORCH_DEFAULT_SEED = 67280421310721  # torch.initial_seed() of a fresh interpreter
_LEN = struct.Struct("!I")


class Unavailable(Exception):
    """No server could be reached or started: the client runs the module in-process."""


# ---------------------------------------------------------------------------------------------- shared

def idle_seconds() -> float:
    return float(os.environ.get("PVS_WARM_IDLE", "120"))


def interpreter_options() -> list[str]:
    """The interpreter's own options (-X ..., -O, -u ...) of this process's command line, before its -m."""
    argv = list(getattr(sys, "orig_argv", []))[1:]
    return argv[:argv.index("-m")] if "-m" in argv else []


def runtime_dir() -> str:
    override = os.environ.get("PVS_WARM_DIR")
    if override:
        return override
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base) and os.access(base, os.W_OK):
        return os.path.join(base, "pvs-warm")
    return f"/tmp/pvs-warm-{os.getuid()}"


def _installed(name: str) -> list[str]:
    """The dist-info names (they carry the version) of a top-level package, found without importing it or
    reading every distribution's metadata (importlib.metadata costs ~0.1 s per start)."""
    from importlib.machinery import PathFinder

    spec = PathFinder.find_spec(name, sys.path)
    if spec is None or not spec.origin:
        return []
    site = os.path.dirname(os.path.dirname(spec.origin)) if spec.submodule_search_locations else \
        os.path.dirname(spec.origin)
    stem = name.replace("-", "_").lower()
    try:
        return sorted(e for e in os.listdir(site) if e.lower().replace("-", "_").startswith(stem + "_")
                      and e.endswith((".dist-info", ".egg-info")))
    except OSError:
        return []


def server_key(environ: dict[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    versions = {name: _installed(name) for name in KEY_PACKAGES}
    env = sorted((k, v) for k, v in environ.items() if k.startswith(KEY_ENV_PREFIXES) and not k.startswith("PVS_WARM"))
    key = dict(executable=sys.executable, options=interpreter_options(), path=sys.path[1:], versions=versions,
               uid=os.getuid(), env=env, version=sys.version)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def paths(key: str) -> dict[str, str]:
    base = os.path.join(runtime_dir(), key)
    return {name: f"{base}.{name}" for name in ("sock", "lock", "pid", "log")}


def _send(conn: socket.socket, obj) -> None:
    conn.sendall((json.dumps(obj) + "\n").encode())


def _recv_exact(conn: socket.socket, n: int, data: bytes = b"") -> bytes:
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data


# ---------------------------------------------------------------------------------------------- client

def _connect(sock_path: str) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(sock_path)
    except OSError:
        conn.close()
        raise
    return conn


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_server(p: dict[str, str], key: str) -> socket.socket:
    """Under the lock: connect to a live server, or replace a stale socket and start one, then connect."""
    import fcntl
    import subprocess

    with open(p["lock"], "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _connect(p["sock"])
        except OSError:
            pass
        try:  # a socket file with nobody listening: its server died
            os.unlink(p["sock"])
        except FileNotFoundError:
            pass
        with open(p["log"], "ab") as log, open(os.devnull, "rb") as null:
            proc = subprocess.Popen([sys.executable, *interpreter_options(), "-m", "pvs.warm", "--serve", key],
                                    stdin=null, stdout=log, stderr=log, start_new_session=True, close_fds=True)
        deadline = time.monotonic() + float(os.environ.get("PVS_WARM_START_TIMEOUT", "300"))
        while time.monotonic() < deadline:
            try:
                return _connect(p["sock"])
            except OSError:
                if proc.poll() is not None:
                    raise Unavailable(f"the server exited with {proc.returncode} (log: {p['log']})")
                time.sleep(0.05)
        raise Unavailable(f"the server did not answer within the start timeout (log: {p['log']})")


def _server_connection() -> socket.socket:
    key = server_key()
    try:
        os.makedirs(runtime_dir(), mode=0o700, exist_ok=True)
        p = paths(key)
        try:
            return _connect(p["sock"])
        except OSError:
            return _start_server(p, key)
    except Unavailable:
        raise
    except OSError as e:
        raise Unavailable(f"{type(e).__name__}: {e}") from None


def _forget_pvs() -> None:
    """Drop the launcher's own package from sys.modules: the job imports pvs afresh, as a plain process does."""
    for name in [m for m in sys.modules if m == "pvs" or m.startswith("pvs.") or m == "__mp_main__"]:
        del sys.modules[name]


def _run_in_process(module: str, args: list[str]) -> int:
    import runpy

    _forget_pvs()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)  # SystemExit and exceptions as in a plain run
    return 0


def _signal_job(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:  # reported before its setsid: the process itself
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _forward_signals(job: dict) -> None:
    """SIGTERM/SIGINT/SIGHUP/SIGQUIT go to the job's process group; before the job exists the client ends by the
    signal as a plain process would (a job started meanwhile is killed by the handler: the connection closes)."""
    def forward(signum, frame):
        if job.get("pid"):
            _signal_job(job["pid"], signum)
        else:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, forward)


def _exit_like(status: int) -> int:
    if status < 0:  # killed by a signal: end the same way
        signal.signal(-status, signal.SIG_DFL)
        sys.stdout.flush()
        os.kill(os.getpid(), -status)
        time.sleep(1)
        return 128 - status
    return status


def run_client(module: str, args: list[str]) -> int:
    if os.environ.get("SLURM_JOB_ID") and not os.environ.get("PVS_WARM_FORCE"):
        return _run_in_process(module, args)
    if os.environ.get("PVS_WARM", "1") == "0":
        return _run_in_process(module, args)
    request = {"module": module, "argv": args, "cwd": os.getcwd(), "environ": dict(os.environ)}
    payload = json.dumps(request).encode()
    job: dict = {}
    _forward_signals(job)
    for attempt in range(2):  # a server that idled out between our connect and its accept closes without a pid
        try:
            conn = _server_connection()
        except Unavailable as e:
            print(f"pvs.warm: no warm server ({e}); running {module} in this process (cold start)", file=sys.stderr)
            return _run_in_process(module, args)
        try:
            socket.send_fds(conn, [_LEN.pack(len(payload)) + payload], [0, 1, 2])
            reader = conn.makefile("r")
            line = reader.readline()
        except OSError:
            line = ""
        if not line:
            conn.close()
            continue
        job["pid"] = json.loads(line)["pid"]
        while True:
            try:
                line = reader.readline()
                break
            except InterruptedError:
                continue
        if not line:
            print(f"pvs.warm: lost the server while {module} ran", file=sys.stderr)
            return 1
        return _exit_like(json.loads(line)["status"])
    print(f"pvs.warm: the server closed twice before starting {module}; running it in this process (cold start)",
          file=sys.stderr)
    return _run_in_process(module, args)


def stop_servers() -> int:
    """Stop every server of the runtime dir (SIGTERM by their pid files, any key); 0 whether or not one ran."""
    import glob

    pids = []
    for pid_file in glob.glob(os.path.join(glob.escape(runtime_dir()), "*.pid")):
        try:
            pids.append(int(open(pid_file).read()))
            os.kill(pids[-1], signal.SIGTERM)
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return 0


# ---------------------------------------------------------------------------------------------- server

def preload() -> None:
    """Import the heavy third-party modules; no tensor ops, no threads."""
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as e:  # a missing optional library: its jobs import it themselves
            print(f"pvs.warm: preload {name}: {type(e).__name__}: {e}", file=sys.stderr)
    for spec in PRELOAD_ATTRS:
        module, _, attr = spec.partition(":")
        try:
            getattr(importlib.import_module(module), attr)
        except Exception as e:
            print(f"pvs.warm: preload {spec}: {type(e).__name__}: {e}", file=sys.stderr)


def _fresh_stdio() -> None:
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    enc = os.environ.get("PYTHONIOENCODING") or None
    sys.stdin = sys.__stdin__ = open(0, "r", closefd=False, encoding=enc)
    out_tty = os.isatty(1)
    sys.stdout = sys.__stdout__ = open(1, "w", closefd=False, encoding=enc,
                                       buffering=1 if out_tty else -1, errors="strict")
    if unbuffered:
        sys.stdout.reconfigure(write_through=True)
    sys.stderr = sys.__stderr__ = open(2, "w", closefd=False, encoding=enc, buffering=1, errors="backslashreplace")


def _fresh_rngs() -> None:
    import random

    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()
    torch = sys.modules.get("torch")
    if torch is not None and torch.initial_seed() != TORCH_DEFAULT_SEED:
        torch.manual_seed(TORCH_DEFAULT_SEED)


def _run_job(request: dict, fds: list[int]) -> None:
    """In the job process (never returns): become the plain ``python -m MODULE`` process and run it."""
    import runpy
    import threading
    import traceback

    status = 1
    try:
        os.setsid()
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["environ"])
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD, signal.SIGALRM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as CPython sets it
        _fresh_stdio()
        try:  # `ps -o comm`/top name the job by its module (its command line stays the server's)
            with open("/proc/self/comm", "w") as comm:
                comm.write(request["module"][-15:])
        except OSError:
            pass
        _forget_pvs()
        sys.path[0] = os.getcwd()
        _fresh_rngs()
        sys.argv = [request["module"], *request["argv"]]
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    interrupted = False
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as e:
        code = e.code
        if code is None:
            status = 0
        elif isinstance(code, int):
            status = code & 0xFF
        else:
            print(code, file=sys.stderr)
            status = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        interrupted = True
    except BaseException:
        sys.excepthook(*sys.exc_info())
        status = 1
    try:
        threading._shutdown()  # join non-daemon threads, as interpreter shutdown does
    except Exception:
        pass
    try:
        import atexit

        atexit._run_exitfuncs()
    except Exception:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status)


def _handle(conn: socket.socket) -> None:
    """In a handler process (never returns): receive one request, fork its job, report pid and status."""
    import select

    status = 1
    try:
        data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
        if len(data) < _LEN.size or len(fds) != 3:
            os._exit(1)
        (n,) = _LEN.unpack(data[:_LEN.size])
        request = json.loads(_recv_exact(conn, n, data[_LEN.size:]))
        pid = os.fork()
        if pid == 0:
            conn.close()
            _run_job(request, fds)
        for fd in fds:
            os.close(fd)
        _send(conn, {"pid": pid})
        try:  # wakes the handler the moment the job exits (Linux >= 5.3); else it polls every 0.1 s
            watch = [conn, os.pidfd_open(pid)]
        except (AttributeError, OSError):
            watch = [conn]
        while True:
            done, wstatus = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(wstatus)
                break
            readable, _, _ = select.select(watch, [], [], 0.1)
            if conn in readable and not conn.recv(1):  # the client is gone: its job goes too
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(pid, 0)
                os._exit(0)
        _send(conn, {"status": status})
    except BaseException:
        import traceback

        traceback.print_exc()
    os._exit(0)


def serve(key: str) -> int:
    import selectors
    import threading

    import gc

    p = paths(key)
    preload()
    gc.collect()
    gc.freeze()  # the preloaded objects leave the collector's view: a job's collections do not touch (copy) them
    if threading.active_count() != 1:
        print(f"pvs.warm: {threading.active_count()} Python threads after preloading; not serving", file=sys.stderr)
        return 1
    tmp = f"{p['sock']}.{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(tmp)
    os.chmod(tmp, 0o600)
    listener.listen(64)
    os.replace(tmp, p["sock"])
    inode = os.stat(p["sock"]).st_ino
    with open(p["pid"], "w") as f:
        f.write(str(os.getpid()))
    print(f"pvs.warm: server {os.getpid()} serving {p['sock']}", file=sys.stderr, flush=True)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *a: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *a: stopping.append(1))
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    handlers: set[int] = set()
    last = time.monotonic()
    idle = idle_seconds()

    def accept_one() -> None:
        conn, _ = listener.accept()
        pid = os.fork()
        if pid == 0:
            listener.close()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            _handle(conn)
        conn.close()
        handlers.add(pid)

    def reap() -> None:
        while handlers:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                handlers.clear()
                return
            if not pid:
                return
            handlers.discard(pid)

    while not stopping:
        for _ in sel.select(timeout=0.5):
            accept_one()
            last = time.monotonic()
        reap()
        if handlers:
            last = time.monotonic()
        elif time.monotonic() - last > idle:
            break
    # stop taking connections: the socket file goes first, then what is already queued is still served
    try:
        if os.stat(p["sock"]).st_ino == inode:
            os.unlink(p["sock"])
    except FileNotFoundError:
        pass
    listener.setblocking(False)
    while not stopping:
        try:
            accept_one()
        except BlockingIOError:
            break
    listener.close()
    try:
        if int(open(p["pid"]).read()) == os.getpid():
            os.unlink(p["pid"])
    except (OSError, ValueError):
        pass
    print(f"pvs.warm: server {os.getpid()} exits ({'stopped' if stopping else 'idle'})", file=sys.stderr, flush=True)
    return 0  # handlers still running finish on their own (the server does not wait for them)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"] and len(argv) == 2:
        return serve(argv[1])
    if argv[:1] == ["--stop"]:
        return stop_servers()
    if argv[:1] == ["-m"]:
        argv = argv[1:]
    if not argv or argv[0].startswith("-"):
        from pvs.cli import doc_parser

        parser = doc_parser("python -m pvs.warm", __doc__)
        parser.add_argument("module", help="the module to run as __main__, e.g. pvs.train (a leading -m is accepted)")
        parser.add_argument("args", nargs="*", help="its arguments, passed as they are")
        parser.add_argument("--stop", action="store_true", help="stop every server of the runtime dir and exit")
        parser.parse_args(argv)
        return 2
    return run_client(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
