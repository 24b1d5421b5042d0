"""Shared test setup: no network, ever."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Plan configs/paper.yaml here without its hub models cached or vllm installed; the tests of
# those checks (tests/test_preflight.py) unset it.
os.environ.setdefault("LINEPO_SKIP_ENV_CHECKS", "1")

# One torch thread per test process: tiny models run faster so on a busy 2-core machine,
# and float rounding (byte-identical resume) depends on the thread count. Subprocesses
# inherit it; Snakemake jobs get their rule's `threads` instead.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    import sys

    if "torch" in sys.modules:  # imported before this hook: set it directly
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
