"""``linepo import-policy``: a configured SFT policy (folder or hub id) into the workflow's results.

    linepo import-policy --source yale-nlp/comal-qwen2-1.5b-mle --tokenizer Qwen/Qwen2-1.5B \\
        --out results/sft/<id>/model [--dtype auto] [--trust-remote-code] [--allow-pickle-weights]

The workflow's ``sft_import`` rule runs it once, so that every later job reads one local
safetensors folder that carries its tokenizer and chat template.
"""

from __future__ import annotations

import json
import logging
import sys


def register(subparsers) -> None:
    from linepo.sources import DTYPES

    parser = subparsers.add_parser("import-policy", help="copy an SFT policy (folder or hub id) into a local folder")
    parser.add_argument("--source", required=True, help="model folder or hub id")
    parser.add_argument("--tokenizer", default=None,
                        help="folder or hub id of the tokenizer (and chat template) when the model's own has none")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="dtype to store the weights in (default: the checkpoint's own)")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the checkpoint's own modelling code")
    parser.add_argument("--allow-pickle-weights", action="store_true",
                        help="read pytorch_model.bin (pickle) weights: converts them to safetensors")
    parser.add_argument("--out", required=True, help="policy folder to write")
    parser.set_defaults(func=run)


def run(args) -> int:
    from linepo.stages.models import import_policy

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    facts = import_policy(args.source, args.out, tokenizer=args.tokenizer, dtype=args.dtype,
                          trust_remote_code=args.trust_remote_code, allow_pickle_weights=args.allow_pickle_weights)
    if not facts["chat_template"]:
        print(f"linepo import-policy: warning: {facts['tokenizer']} has no chat template; prompts will be "
              "plain 'User: ...\\nAssistant:' text", file=sys.stderr)
    print(json.dumps(facts, sort_keys=True))
    return 0
