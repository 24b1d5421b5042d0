"""The ``linepo`` command's side of warm jobs: hand this command to the workflow's fork server.

Why: most workflow jobs spend 6-8 s importing torch and transformers before 1-10 s of
work. When the local workflow started a fork server (:mod:`linepo.warm.server`, from the
Snakefile's ``onstart``), the console entry point sends it argv, working directory, umask,
environment and its standard streams (the file descriptors themselves, over the Unix
socket), waits for the forked child's exit status and ends the same way: the same code,
or killed by the same signal. Signals this process receives are forwarded to the child;
if this process dies (SIGKILL), the server sees the socket hang up and kills the child.

Anything else runs here as before (:func:`run_warm` returns None): no server named in the
environment, ``LINEPO_WARM=0``, another host, a command that starts its own processes
(``--num-processes``/``--data-parallel`` > 1, or already under ``accelerate launch``), or
a server that refuses (its environment or interpreter differs, it is not ready to fork).
This module imports nothing heavy: it runs before every command.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

ENV_SOCKET = "LINEPO_WARM_SOCKET"  # the server's socket path, set for local jobs by the workflow
ENV_HOST = "LINEPO_WARM_HOST"  # the host it listens on: a job elsewhere never tries it
ENV_SWITCH = "LINEPO_WARM"  # "0": no server is started and no command uses one

#: flags whose value > 1 makes a command start processes of its own (launchers, GPU workers)
OWN_PROCESS_FLAGS = ("--num-processes", "--data-parallel")
#: signals forwarded to the child (what Snakemake, a shell or a terminal sends to stop a job)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def send_message(sock: socket.socket, message: dict, fds=()) -> None:
    """One length-prefixed JSON message, with ``fds`` attached (SCM_RIGHTS) when given."""
    data = json.dumps(message).encode()
    data = struct.pack("!I", len(data)) + data
    if fds:
        sent = socket.send_fds(sock, [data], list(fds))
        data = data[sent:]
    sock.sendall(data)


def receive_message(sock: socket.socket, maxfds: int = 0):
    """``(message, fds)``: the next message and the descriptors that came with it; ``(None, [])`` at hang-up.

    Reads exactly one message's bytes (its 4-byte length, then that many), never into the next
    one: the server's ``{"pid"}`` and ``{"exit"}`` of a quick command can both be waiting.
    """
    buffer, fds, size = b"", [], 4
    while len(buffer) < size:
        if maxfds and not buffer:  # the descriptors come with the message's first bytes
            chunk, got, _flags, _addr = socket.recv_fds(sock, size, maxfds)
            fds.extend(got)
        else:
            chunk = sock.recv(size - len(buffer))
        if not chunk:
            for fd in fds:
                os.close(fd)
            return None, []
        buffer += chunk
        if size == 4 and len(buffer) == 4:
            size += struct.unpack("!I", buffer)[0]
    return json.loads(buffer[4:]), fds


def needs_own_process(argv, environ) -> bool:
    """Whether the command starts processes of its own (or already is one of several)."""
    if "WORLD_SIZE" in environ:
        return True
    for i, arg in enumerate(argv):
        for flag in OWN_PROCESS_FLAGS:
            value = arg[len(flag) + 1:] if arg.startswith(flag + "=") else (
                argv[i + 1] if arg == flag and i + 1 < len(argv) else None)
            if value is not None and not (value.isdigit() and int(value) <= 1):
                return True
    return False


def run_warm(argv: list[str]) -> int | None:
    """Run ``linepo argv`` in the server's fork: its exit code, or None to run it here as usual.

    Killed by a signal, the child's signal kills this process too (so its parent sees the
    same status as without the server).
    """
    path = os.environ.get(ENV_SOCKET)
    if (not path or os.environ.get(ENV_SWITCH) == "0" or os.environ.get(ENV_HOST) != socket.gethostname()
            or needs_own_process(argv, os.environ)):
        return None
    # Signals wait during the hand-over: then they go to the child, or (refused) act here as usual.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        umask = os.umask(0)
        os.umask(umask)
        import linepo

        send_message(sock, {"argv": list(argv), "argv0": sys.argv[0] if sys.argv else "linepo",
                            "cwd": os.getcwd(), "umask": umask, "client": os.getpid(), "env": dict(os.environ),
                            "executable": [os.path.realpath(sys.executable), sys.prefix], "linepo": os.path.abspath(linepo.__file__)},
                     fds=(0, 1, 2))
        reply, _ = receive_message(sock)
    except OSError:
        reply = None
    if not reply or "pid" not in reply:
        sock.close()
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return None  # no server, refused (the reason is in the server's log) or gone: run here

    def forward(signum, _frame):
        try:
            send_message(sock, {"signal": signum})
        except OSError:
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    status, _ = receive_message(sock)
    sock.close()
    if status is None:
        print("linepo: the warm-job server went away while running this command", file=sys.stderr)
        return 1
    if "signal" in status:
        signum = status["signal"]
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return 128 + signum  # a signal that does not end a process by default
    return status["exit"]
