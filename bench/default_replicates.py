"""The default's replicates against the cost it replaced: one run, two fresh workflow copies.

    HF_HUB_OFFLINE=1 python bench/default_replicates.py                 # ~25 min on 2 cores
    HF_HUB_OFFLINE=1 python bench/default_replicates.py --baseline c357fe2 --keep DIR

The replicates issue asks that the default ``snakemake --cores 2`` run at least two
replicates and be no slower than the one-replicate cold run it replaced. Both are timed
here, one after the other on the same machine: the baseline is the config.yaml of git
revision ``--baseline`` (the last one-replicate default) with ``replicates: 1``, run cold
(``LINEPO_WARM=0``, as before the warm-job server); the candidate is today's config.yaml,
run as a user runs it (warm). Prints both wall times, their ratio (goal ≤ 1.00), the job
counts, and the candidate's pooled exploitability table. Run it with nothing else running.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from warm_jobs import REPO, job_times, run_workflow, workflow_with_config  # noqa: E402

from linepo.workflow.replicates import replicates_shorthand  # noqa: E402

#: the last commit whose default ran one replicate (before the replicates issue's switch)
BASELINE_REVISION = "c357fe2"


def config_at(revision: str) -> dict:
    text = subprocess.run(["git", "show", f"{revision}:config.yaml"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout
    return yaml.safe_load(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE_REVISION, help="git revision of the one-replicate default")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", metavar="DIR", help="run in DIR/baseline-cold and DIR/default-warm and keep them")
    args = parser.parse_args()
    baseline = {**config_at(args.baseline), "replicates": 1}
    candidate = yaml.safe_load((REPO / "config.yaml").read_text())
    with (contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(prefix="replicates-")) as tmp:
        baseline_dir = workflow_with_config(Path(tmp) / "baseline-cold", baseline)
        candidate_dir = workflow_with_config(Path(tmp) / "default-warm", candidate)
        baseline_seconds = run_workflow(baseline_dir, warm=False, cores=args.cores)
        candidate_seconds = run_workflow(candidate_dir, warm=True, cores=args.cores)
        baseline_jobs = sum(map(len, job_times(baseline_dir).values()))
        candidate_jobs = sum(map(len, job_times(candidate_dir).values()))
        table = (candidate_dir / "results/summary/exploitability.tsv").read_text()
    shorthand = {"replicates": candidate.get("replicates")}
    replicates_shorthand(shorthand)  # the config's own reading of `replicates: N`
    count = shorthand.get("replicates", {}).get("count", 1)
    print(f"baseline  {args.baseline}:config.yaml, 1 replicate, cold: {baseline_jobs} jobs, {baseline_seconds:7.1f} s")
    print(f"default   config.yaml, {count} replicates, warm:   {candidate_jobs} jobs, {candidate_seconds:7.1f} s")
    print(f"default / baseline: {candidate_seconds / baseline_seconds:.2f} (goal <= 1.00)")
    print("results/summary/exploitability.tsv of the default:")
    print(table, end="")


if __name__ == "__main__":
    main()
