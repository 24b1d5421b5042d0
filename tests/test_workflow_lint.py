"""`snakemake --lint` is clean but for the conda/container notes, kept on purpose: linepo is a
pip-installed workflow (one environment, `pip install -e .`), not per-rule conda envs or containers.

Every other finding (a rule without `log:`, a shell command reading a global instead of
`params:`, functions mixed with rules, ...) fails here, for each way of choosing the SFT policy:
embedded (config.yaml), imported (configs/paper.yaml) and built (`policy.sft: build`)."""

from __future__ import annotations

import re

import pytest
import yaml

from workflow_utils import copy_workflow, snakemake

#: The one finding we keep: snakemake's "Specify a conda environment or container for each rule."
KEPT = re.compile(r"conda environment or container", re.IGNORECASE)
#: Lines that are not lints: snakemake's notes on the profile and config it uses.
NOTES = ("Using workflow specific profile", "Config file config.yaml is ")  # extended/replaced by ...
BUILD = {"policy": {"sft": "build", "tokenizer": "Qwen/Qwen2-1.5B", "dtype": "bfloat16",
                    "build": {"base": "Qwen/Qwen2-1.5B", "max_examples": 1000}}}


def lint_findings(output: str) -> list[tuple[str, str]]:
    """(section, finding title) of every finding `snakemake --lint` prints; a line that is neither
    a section header, a finding nor one of its indented explanation lines is an error."""
    findings, section = [], None
    for line in output.splitlines():
        if not line.strip() or line.startswith(NOTES):
            continue
        if line.startswith("Lints for "):  # "Lints for rule X (line N, file):" or "Lints for snakefile F:"
            section = line.removesuffix(":")
        elif line.startswith("    * ") and section:
            findings.append((section, line.removeprefix("    * ").removesuffix(":")))
        elif not (line.startswith("      ") and findings):
            raise AssertionError(f"unexpected line in snakemake --lint output: {line!r}\n{output[-3000:]}")
    return findings


@pytest.mark.parametrize("args", [
    pytest.param([], id="default"),
    pytest.param(["--configfile", "configs/paper.yaml"], id="paper"),
    pytest.param(["--configfile", "configs/paper.yaml", "--replace-workflow-config"], id="paper-replaced"),
    pytest.param(["--configfile", "build.yaml"], id="sft-build"),
])
def test_snakemake_lint_reports_only_the_conda_container_notes(tmp_path, args):
    workdir = copy_workflow(tmp_path)
    (workdir / "build.yaml").write_text(yaml.safe_dump(BUILD))
    result = snakemake(workdir, "--lint", *args, timeout=300)
    output = result.stdout + result.stderr
    findings = lint_findings(output)
    assert findings, f"snakemake --lint printed no finding at all (did it lint?):\n{output[-3000:]}"
    others = [f"{section}: {title}" for section, title in findings if not KEPT.search(title)]
    assert not others, "snakemake --lint findings besides the conda/container notes:\n" + "\n".join(others)
    # Lints found (the conda notes) exit 1; anything else (an error) would have printed other lines.
    assert result.returncode in (0, 1), output[-3000:]
    assert not (workdir / "results").exists()  # linting ran no job
