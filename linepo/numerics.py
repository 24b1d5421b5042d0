"""The numerics environment an artefact was computed in, recorded in its provenance.

Float results depend on more than code and seeds: the torch and transformers releases, the
CPU kernel family torch dispatched to (``torch.backends.cpu.get_cpu_capability()``: AVX2
and AVX512 kernels round differently), the CPU model (MKL picks its GEMM path by it), the
thread count (how reductions are split), the GPU and CUDA release. The toy's 1-epoch
training steps amplify a last-bit difference into another realisation: the same code, config,
library versions and node ids gave LINE-PO 0.026 on an Intel Xeon and 0.052 on an AMD EPYC.
So every job that ran a model records its environment, every artefact carries the distinct
environments of its whole history (its own and its inputs'), and the workflow says when a
table mixes environments: numbers reproduce to the last digit only within one.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

#: The provenance key (folder record and table metadata) holding the list of environments.
KEY = "environments"


def job_environment() -> dict | None:
    """This process's numerics environment, or None when it computed nothing with torch.

    Read from the modules already imported (a judging or pairing job imports no torch and
    adds nothing of its own).
    """
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "get_num_threads"):
        return None
    env = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        env["numpy"] = numpy.__version__
    for name in ("transformers", "vllm"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "__version__"):
            env[name] = module.__version__
    try:
        env["cpu_kernels"] = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        pass
    cpu = cpu_model()
    if cpu:
        env["cpu"] = cpu
    cuda = getattr(torch, "cuda", None)
    if cuda is not None and cuda.is_initialized():  # only a job that used the GPU
        env["cuda"] = f"{torch.version.cuda} {cuda.get_device_name(cuda.current_device())}"
    return env


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's vendor and model name ('' where the OS does not say).

    MKL picks its GEMM code path by vendor and model, not only by the ISA torch reports: the
    same torch build, kernels "AVX512" on both, trained other toy numbers on an Intel Xeon
    than on an AMD EPYC.
    """
    import platform

    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor()
    fields = dict(line.split(":", 1) for line in text.splitlines()[:30] if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    return " ".join(v for v in (fields.get("vendor_id"), fields.get("model name")) if v)


def _canonical(env: dict) -> str:
    return json.dumps(env, sort_keys=True)


def merge(*groups) -> list[dict]:
    """The distinct environments of ``groups`` (lists of environments), in a fixed order."""
    distinct = {}
    for group in groups:
        for env in group or []:
            if isinstance(env, dict):
                distinct.setdefault(_canonical(env), env)
    return [distinct[key] for key in sorted(distinct)]


def recorded(path) -> list[dict]:
    """The environments an artefact's provenance records ([] for a hand-made one or a hub id)."""
    from linepo.provenance import read_folder_provenance, recorded_provenance

    path = Path(str(path)).expanduser()
    if path.is_dir():
        record = read_folder_provenance(path) or {}
    elif path.suffix == ".parquet" and path.is_file():
        record = recorded_provenance(path) or {}
    elif path.suffix == ".json" and path.is_file():  # a report that carries its policy's history
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = {}
    else:
        record = {}
    found = record.get(KEY) if isinstance(record, dict) else None
    return merge(found if isinstance(found, list) else [])


def output_history(inputs, computed: bool, shards=()) -> list[dict]:
    """The environments behind an output: its inputs' histories, the shards' (metadata of a
    sharded job's worker files) and, when this job ``computed`` with a model, its own."""
    shard_envs = [(meta.get("provenance") or {}).get(KEY) for meta in shards if isinstance(meta, dict)]
    inherited = merge(*(recorded(item) for item in inputs if not isinstance(item, dict)))
    own = job_environment() if computed else None
    return merge(inherited, [own] if own else [], *shard_envs)


def describe(env: dict) -> str:
    """One environment in a line: ``torch 2.13.0+cpu, transformers 5.24.0, numpy 2.3.1, AVX512, 2 threads``."""
    parts = [f"torch {env.get('torch', '?')}"]
    parts += [f"{name} {env[name]}" for name in ("transformers", "vllm", "numpy") if name in env]
    if "cpu" in env:
        parts.append(env["cpu"])
    if "cpu_kernels" in env:
        parts.append(f"CPU kernels {env['cpu_kernels']}")
    if "cuda" in env:
        parts.append(f"CUDA {env['cuda']}")
    parts.append(f"{env.get('threads', '?')} threads")
    return ", ".join(parts)


def summary(paths) -> str:
    """What computed the artefacts at ``paths``: one environment, or a warning naming each.

    Paths that do not exist (yet) are skipped; '' when none records an environment.
    """
    return describe_all(merge(*(recorded(path) for path in paths if Path(str(path)).exists())))


def describe_all(envs: list[dict]) -> str:
    """One environment in a sentence, a warning naming each when there are several, '' for none."""
    if not envs:
        return ""
    if len(envs) == 1:
        return f"Computed with {describe(envs[0])}."
    listed = "; ".join(f"({i}) {describe(env)}" for i, env in enumerate(envs, 1))
    return (f"WARNING: these results mix {len(envs)} numerics environments, so they are not one "
            f"realisation of a recipe: {listed}. A rerun reproduces a number to the last digit "
            "only in the environment that computed it.")
