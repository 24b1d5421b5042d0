"""Stages that need no model must not pay torch's import (3.5–4.5 s per job process)."""

import subprocess
import sys

MODEL_FREE = ["linepo.cli", "linepo.workflow.config", "linepo.workflow.plan", "linepo.stages.judges", "linepo.stages.preferences",
              "linepo.games.runs", "linepo.games.game", "linepo.stages.prompts", "linepo.schemas",
              "linepo.workflow.evalplan", "linepo.evaluation.winrates", "linepo.evaluation.figures"]


def test_model_free_stages_do_not_import_torch():
    code = (
        "import sys, importlib\n"
        f"for name in {MODEL_FREE!r}: importlib.import_module(name)\n"
        "from linepo.cli import build_parser\n"
        "build_parser()\n"
        "from linepo.stages.judges import make_judge\n"
        "make_judge({'type': 'synthetic'})\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
