"""The fork server behind warm local jobs: torch and transformers imported once per workflow.

Why: a cold job pays the 6-8 s import of torch and transformers before 1-10 s of work;
forking a process that already imported them costs milliseconds. The Snakefile's
``onstart`` calls :func:`start` (local executor only), which launches :func:`serve` and
names its socket in the environment that local jobs inherit; ``onsuccess``/``onerror``
call :func:`stop`. The ``linepo`` client (:mod:`linepo.warm.client`) sends each command.

A fork is only as good as the state it copies, so the server forks only while it is as a
cold process would be after those imports: one thread (a fork after threads can deadlock;
no torch op has run, so torch's thread pools start, sized by the job's environment, in the
child), CUDA not initialised, torch's random generator untouched, the imports silent (a
warning they print would be missing from the job's log), and the client's interpreter,
``linepo`` package and environment (every variable, since libraries read it at import)
equal to the server's. Otherwise it refuses and the client runs the command itself.

Each child takes the client's descriptors 0-2, cwd, umask, environment and argv, runs
:func:`linepo.cli.main` in a session of its own and exits as a cold process would. The
server sends back its exit status, forwards the client's signals to the child's process
group, kills that group when the client hangs up (a SIGKILLed job), and a child dies with
the server (PR_SET_PDEATHSIG). Linux only (pidfds); elsewhere :func:`start` does nothing.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from linepo.warm.child import run_command
from linepo.warm.client import ENV_HOST, ENV_SOCKET, ENV_SWITCH, receive_message, send_message

#: environment variables that a shell or Snakemake sets per process and no import reads
IGNORED_ENV = {"_", "SHLVL", "PWD", "OLDPWD"}
#: what every model job imports (linepo's own modules are added): the cost a warm job skips
PRELOAD = ("numpy", "pandas", "pyarrow.parquet", "scipy.optimize", "safetensors.torch", "torch", "transformers",
           "accelerate", "datasets", "tokenizers")
PRELOAD_ATTRS = ("AutoModelForCausalLM", "AutoTokenizer", "AutoConfig", "Trainer", "TrainingArguments",
                 "GenerationConfig", "PreTrainedTokenizerFast", "Qwen2Config", "Qwen2ForCausalLM")
#: native threads whose library keeps a fork safe (see :func:`unfit_to_fork`)
FORK_SAFE_THREADS = {"jemalloc_bg_thd"}
LOG = Path(".snakemake/linepo-warm.log")
_BOOT = "import sys; del sys.path[0]; from linepo.warm.server import serve; serve(sys.argv[1])"
_RESUME = "import sys; del sys.path[0]; from linepo.warm.server import resume; resume(*map(int, sys.argv[1:]))"
_running: dict = {}


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} [{os.getpid()}] {message}", file=sys.stderr, flush=True)


def start(local: bool) -> str | None:
    """Launch the server for this workflow's local jobs; its socket path, or None when off.

    Off unless ``local`` (the local executor: cluster jobs run where no server is), on Linux,
    and not switched off with ``LINEPO_WARM=0``. Waits only until the socket exists: jobs
    that connect while the server imports wait for it rather than import alongside it.
    """
    if not local or os.environ.get(ENV_SWITCH) == "0" or not hasattr(os, "pidfd_open") or _running:
        return None
    directory = tempfile.mkdtemp(prefix="linepo-warm-")
    path = os.path.join(directory, "socket")
    os.environ[ENV_SOCKET], os.environ[ENV_HOST] = path, socket.gethostname()
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(LOG, "a") as stream:
        process = subprocess.Popen([sys.executable, "-c", _BOOT, path], stdin=subprocess.DEVNULL, stdout=stream,
                                   stderr=stream, start_new_session=True)
    _running.update(process=process, directory=directory)
    deadline = time.monotonic() + 10
    while not os.path.exists(path) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return path


def stop() -> None:
    """Shut the server down (it finishes running children first) and forget its socket."""
    os.environ.pop(ENV_SOCKET, None)
    os.environ.pop(ENV_HOST, None)
    process = _running.pop("process", None)
    if process is not None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if "directory" in _running:
        shutil.rmtree(_running.pop("directory"), ignore_errors=True)


def preload() -> None:
    """Import what the jobs import, so that the children start with it."""
    for name in PRELOAD:
        importlib.import_module(name)
    transformers = sys.modules["transformers"]
    for attr in PRELOAD_ATTRS:
        getattr(transformers, attr)
    import linepo

    for info in pkgutil.walk_packages(linepo.__path__, "linepo."):
        if not info.name.startswith(("linepo.warm", "linepo.stages.judges.vllm")):
            importlib.import_module(info.name)
    from linepo.cli import build_parser

    build_parser()


def unfit_to_fork() -> str | None:
    """Why a fork now would differ from a cold start (None: fit).

    Threads besides this one must be of a library that makes fork safe itself: OpenBLAS
    (numpy's, scipy's) stops its pool in a pthread_atfork handler (so after :func:`serve`'s
    probe fork none is left), jemalloc (pyarrow's) takes its locks around a fork.
    """
    threads = [Path(f"/proc/self/task/{task}/comm").read_text().strip() for task in os.listdir("/proc/self/task")
               if int(task) != threading.get_native_id()]
    if threading.active_count() != 1 or set(threads) - FORK_SAFE_THREADS:
        return f"threads running: {sorted(threads)}"
    import torch

    if torch.cuda.is_initialized():
        return "CUDA initialised"
    if not torch.equal(torch.get_rng_state(), torch.Generator().manual_seed(torch.initial_seed()).get_state()):
        return "torch's random generator was used"
    return None


def refusal(request: dict, environ: dict, unfit: str | None) -> str | None:
    """Why the server will not run this request (None: it will)."""
    import linepo

    if unfit:
        return f"not fit to fork: {unfit}"
    interpreter = [os.path.realpath(sys.executable), sys.prefix]
    if request.get("executable") != interpreter:
        return f"interpreter {request.get('executable')} is not {interpreter}"
    if request.get("linepo") != os.path.abspath(linepo.__file__):
        return f"linepo {request.get('linepo')} is not {os.path.abspath(linepo.__file__)}"
    env = request.get("env", {})
    differ = sorted(k for k in set(env) ^ set(environ) | {k for k in env if environ.get(k) != env[k]}
                    if k not in IGNORED_ENV)
    return f"environment differs: {', '.join(differ)}" if differ else None


def _receive(listener):
    """``(conn, request, fds)`` of the next client, or None for one that sent no request from this user."""
    conn, _ = listener.accept()
    conn.settimeout(10)
    try:
        _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        request, fds = receive_message(conn, maxfds=3)
    except OSError:
        conn.close()
        return None
    if uid != os.getuid() or request is None or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        conn.close()
        return None
    return conn, request, fds


def serve(path: str) -> None:
    """Listen on ``path``; at the first command, become the server with that job's environment.

    Snakemake gives each job its own variables (``OMP_NUM_THREADS`` and the like from its
    threads, ``TMPDIR`` from its tmpdir), which libraries read as they load: the server
    re-executes itself with the first job's environment before importing anything, keeping
    the socket and that job's connection open across the exec (:func:`resume`).
    """
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    parent = os.getppid()
    while True:
        if os.getppid() != parent:
            return
        if not _ready(listener):
            continue
        first = _receive(listener)
        if first is not None:
            break
    conn, request, fds = first
    memfd = os.memfd_create("linepo-warm-request")
    os.write(memfd, json.dumps(request).encode())
    keep = [listener.fileno(), conn.fileno(), memfd, *fds]
    for fd in keep:
        os.set_inheritable(fd, True)
    log(f"taking the environment of the first job {request.get('argv', [])[:1]}")
    os.execve(sys.executable, [sys.executable, "-c", _RESUME, *map(str, keep)], request.get("env") or {})


def _ready(listener) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(listener, selectors.EVENT_READ)
        return bool(selector.select(timeout=1.0))


def resume(listener_fd: int, conn_fd: int, request_fd: int, *fds: int) -> None:
    """Import, then run the first command and fork a child per later one until SIGTERM."""
    listener, conn = socket.socket(fileno=listener_fd), socket.socket(fileno=conn_fd)
    with os.fdopen(request_fd, "rb") as stream:
        stream.seek(0)
        request = json.loads(stream.read())
    for fd in (listener_fd, conn_fd, *fds):
        os.set_inheritable(fd, False)
    environ, parent = dict(os.environ), os.getppid()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    begun = time.monotonic()
    captured = tempfile.TemporaryFile()
    saved = os.dup(1), os.dup(2)
    os.dup2(captured.fileno(), 1)
    os.dup2(captured.fileno(), 2)
    try:
        preload()
        noise = None
    except Exception as err:  # serve refusals: every job then runs cold
        noise = f"import failed: {type(err).__name__}: {err}"
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    captured.seek(0)
    output = captured.read()
    captured.close()
    os.close(saved[0])
    os.close(saved[1])
    if output and noise is None:
        noise = f"the imports printed {output[:300]!r}"
    probe = os.fork()  # lets the libraries' fork handlers stop their thread pools
    if probe == 0:
        os._exit(0)
    os.waitpid(probe, 0)
    unfit = noise or unfit_to_fork()
    log(f"serving (imports {time.monotonic() - begun:.1f} s){'; refusing: ' + unfit if unfit else ''}")
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    jobs: dict[int, dict] = {}
    _launch(conn, request, list(fds), listener, selector, jobs, environ, unfit)
    while not (stopping and not jobs):
        if (stopping or os.getppid() != parent) and listener.fileno() >= 0:
            selector.unregister(listener)
            listener.close()
            stopping.append(True)
        for key, _ in selector.select(timeout=1.0):
            if key.data is None:
                received = _receive(listener)
                if received is not None:
                    _launch(*received, listener, selector, jobs, environ, unfit or unfit_to_fork())
            elif key.data[0] == "client":
                _from_client(key.data[1], selector)
            else:
                _reap(key.data[1], selector, jobs)
    log("stopped")


def _launch(conn, request, fds, listener, selector, jobs, environ, unfit) -> None:
    """Fork a child for ``request`` and watch it, or tell the client why not."""
    try:
        reason = refusal(request, environ, unfit)
        if reason:
            log(f"refused {request.get('argv', [])[:1]}: {reason}")
            send_message(conn, {"refused": reason})
            raise OSError(reason)
        sys.stdout.flush()
        sys.stderr.flush()
        inherited = [listener, conn, selector] + [j["conn"] for j in jobs.values() if j["conn"]]
        inherited += [_Fd(j["pidfd"]) for j in jobs.values()]
        pid = os.fork()
        if pid == 0:
            run_command(request, fds, inherited)
        job = {"conn": conn, "pidfd": os.pidfd_open(pid), "pid": pid, "argv": request["argv"][:1],
               "begun": time.monotonic()}
        jobs[pid] = job
        selector.register(conn, selectors.EVENT_READ, ("client", job))
        selector.register(job["pidfd"], selectors.EVENT_READ, ("exit", job))
        send_message(conn, {"pid": pid})
        log(f"{pid} {job['argv']} started for client {request.get('client')}")
    except OSError:
        conn.close()
    finally:
        for fd in fds:
            os.close(fd)


class _Fd:
    def __init__(self, fd):
        self.fd = fd

    def close(self):
        os.close(self.fd)


def _from_client(job, selector) -> None:
    """A forwarded signal, or the client's hang-up: it was killed, so kill its command too."""
    try:
        message, _ = receive_message(job["conn"])
    except OSError:
        message = None
    if message is None:
        selector.unregister(job["conn"])
        job["conn"].close()
        job["conn"] = None
        log(f"client of {job['pid']} {job['argv']} hung up: killing it")
        _kill(job["pid"], signal.SIGKILL)
    elif "signal" in message:
        _kill(job["pid"], message["signal"])


def _kill(pid, signum) -> None:
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signum)
        except OSError:
            pass


def _reap(job, selector, jobs) -> None:
    _, status = os.waitpid(job["pid"], 0)
    code = os.waitstatus_to_exitcode(status)
    selector.unregister(job["pidfd"])
    os.close(job["pidfd"])
    del jobs[job["pid"]]
    log(f"{job['pid']} {job['argv']} -> {code} in {time.monotonic() - job['begun']:.1f} s")
    if job["conn"] is not None:
        selector.unregister(job["conn"])
        try:
            send_message(job["conn"], {"signal": -code} if code < 0 else {"exit": code})
        except OSError:
            pass
        job["conn"].close()
