"""The forked child of the warm-job server: become the job, run ``linepo``, exit as a cold process would.

Why here: what a cold start sets up (streams, signal dispositions, random seeds, exit
handling) the child must set up itself, since it starts as a copy of the server.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import sys
import threading


def run_command(request: dict, fds: list[int], inherited: list) -> None:
    """In the child: become the job (streams, cwd, umask, environment, argv), run it, exit. Never returns."""
    code = 1
    try:
        os.setsid()
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the server
        for thing in inherited:
            thing.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            os.close(fd)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [request["argv0"], *request["argv"]]
        sys.stdout.reconfigure(line_buffering=os.isatty(1))
        import random

        import numpy
        import torch

        random.seed()  # a cold process seeds these from fresh entropy; a fork would share the server's
        numpy.random.seed()
        torch.seed()
        code = _exit_code(request["argv"])
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code & 0xFF)


def _exit_code(argv) -> int:
    """What ``sys.exit(main())`` followed by interpreter shutdown makes of the command."""
    import traceback

    from linepo.cli import main

    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    except KeyboardInterrupt:
        traceback.print_exc()
        _shutdown(threading)
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)  # as Python does for an uncaught KeyboardInterrupt
        code = 130
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    _shutdown(threading)
    return code


def _shutdown(threading) -> None:
    """Interpreter shutdown's first steps: join non-daemon threads, run atexit handlers."""
    getattr(threading, "_shutdown", lambda: None)()
    atexit._run_exitfuncs()
