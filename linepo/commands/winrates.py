"""Evaluation commands of rules/evaluate.smk: pairwise comparisons, the win-rate matrix,
Figure 3's curves, the summary table and the AlpacaEval export. Model-free (torch only
for an LM judge), so each job starts in well under a second.

    linepo compare --a a.parquet --b b.parquet --judge-config '{"type": "synthetic"}' --out ab.parquet
    linepo compare-batch --pairs '{"ab": {"a": "a.parquet", "b": "b.parquet"}}' --judge-config JUDGE \
        --cache-dir cache --out batch.parquet
    linepo win-rates --spec SPEC --csv M.csv --se-csv SE.csv --hard-csv H.csv --hard-se-csv HSE.csv \
        --pairs P.tsv --figure M.png
    linepo eval-curves --spec SPEC --tsv curves.tsv --figure curves.png
    linepo eval-summary --spec SPEC --matrix M.csv --hard-matrix H.csv --out evaluation.tsv
    linepo alpaca-export --generations g.parquet --prompts eval.parquet --generator LINE-PO --out model_outputs.json

SPEC is inline JSON written by the workflow (see rules/evaluate.smk for its shape).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from linepo.errors import InputError
from linepo.settings import fraction


def register(subparsers) -> None:
    p = subparsers.add_parser("compare", help="judge two generations on every prompt, both orders",
                              description="linepo compare: judge generation a against generation b on every "
                              "(prompt, sample) both answered, in both orders, and write the comparisons "
                              "parquet that win-rates and eval-curves read. Both must answer the same prompts.")
    p.add_argument("--a", required=True, type=Path, help="generation (samples parquet) of checkpoint a")
    p.add_argument("--b", required=True, type=Path, help="generation (samples parquet) of checkpoint b")
    p.add_argument("--judge-config", default='{"type": "synthetic"}', help="inline JSON or a JSON/YAML file")
    p.add_argument("--out", required=True, type=Path, help="comparisons parquet to write")
    p.set_defaults(func=run_compare)

    p = subparsers.add_parser("compare-batch", help="judge many generation pairs with one judge load, cached per pair",
                              description="linepo compare-batch: judge each pair of --pairs as linepo compare does, "
                              "loading the judge once (and only when a pair is not cached). Each pair is written to "
                              "--cache-dir/<id>.parquet as soon as it is judged, and reused while its generations' "
                              "digests and the judge match; --out holds every pair's rows with a comparison column.")
    p.add_argument("--pairs", required=True, help='inline JSON or a JSON file: {comparison id: {"a": generation '
                                                   'parquet, "b": generation parquet}}')
    p.add_argument("--judge-config", default='{"type": "synthetic"}', help="inline JSON or a JSON/YAML file")
    p.add_argument("--cache-dir", required=True, type=Path, help="folder of the per-pair comparisons files")
    p.add_argument("--out", required=True, type=Path, help="the batch parquet to write")
    p.set_defaults(func=run_compare_batch)

    p = subparsers.add_parser("win-rates", help="the row-vs-column win-rate matrix with bootstrap SEs")
    p.add_argument("--spec", required=True, help='JSON or a JSON file: {"checkpoints": [{name, label, '
                                                  'generation}], "comparisons": {id: {a, b, batch | path}}}')
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", required=True, type=Path)
    p.add_argument("--se-csv", required=True, type=Path)
    p.add_argument("--hard-csv", type=Path, help="the hard win-rate matrix (rows scored 1/0/½), with Avg")
    p.add_argument("--hard-se-csv", type=Path, help="its bootstrap standard errors")
    p.add_argument("--counts-csv", type=Path, help="judged/failed comparisons per cell")
    p.add_argument("--max-failed-fraction", type=fraction, default=None,
                   help="a cell with a larger share of failed comparisons is missing (default: the limit each "
                        "comparisons file's judge recorded)")
    p.add_argument("--pairs", required=True, type=Path)
    p.add_argument("--figure", required=True, type=Path)
    p.set_defaults(func=run_win_rates)

    p = subparsers.add_parser("eval-curves", help="Figure 3: win rate vs SFT and output length per iteration")
    p.add_argument("--spec", required=True, help='JSON or a JSON file: {"runs": {...}, "generations": '
                                                  '{id: path}, "comparisons": {id: {batch | path} or path}}')
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-failed-fraction", type=fraction, default=None,
                   help="a point with a larger share of failed comparisons is missing (default: as recorded)")
    p.add_argument("--tsv", required=True, type=Path)
    p.add_argument("--figure", required=True, type=Path)
    p.set_defaults(func=run_curves)

    p = subparsers.add_parser(
        "eval-summary", help="per checkpoint: Avg and worst win rate, meta game, length, exploitability",
        description="linepo eval-summary: per checkpoint, its average and worst win rate, the meta game of the "
        "win rate matrix (meta_nash: its mass in the maximum entropy Nash of the checkpoints' game; "
        "pool_exploitability: the best win rate any checkpoint has against it, minus 1/2; nash_averaged: its "
        "Nash averaged rating, Balduzzi et al. 2018; the matrix symmetrised as (M + 1 - M^T)/2 first, empty with a "
        "missing cell), output length and, with the synthetic oracle, exploitability.")
    p.add_argument("--spec", required=True, help='JSON or a JSON file: {"checkpoints": [{name, label, '
                                                  'policy, generation}], "generations": {id: path}, '
                                                  '"exploitability": {name: path}}')
    p.add_argument("--matrix", required=True, type=Path, help="the win-rates CSV")
    p.add_argument("--hard-matrix", type=Path, help="the hard win-rates CSV: adds avg/worst_hard_win_rate")
    p.add_argument("--counts", type=Path, help="the judged/failed counts CSV: adds judged and failed")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=run_summary)

    p = subparsers.add_parser("alpaca-export", help="a generation as AlpacaEval's model_outputs.json")
    p.add_argument("--generations", required=True, type=Path)
    p.add_argument("--prompts", required=True, type=Path, help="the eval prompts parquet the generation answered")
    p.add_argument("--generator", required=True, help="the generator name AlpacaEval shows")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=run_export)


def _spec(text: str) -> dict:
    """``--spec``: inline JSON (what the workflow passes) or the path of a JSON file."""
    from linepo.sources import json_object_argument

    return json_object_argument(text, "--spec")[0]


def run_compare(args) -> int:
    from linepo.evaluation.winrates import compare_files
    from linepo.stages.judges import load_judge_config

    if args.out.suffix != ".parquet":
        raise InputError(f"--out {args.out}: must end in .parquet")
    config, label = load_judge_config(args.judge_config)
    stats = compare_files(args.a, args.b, config, args.out, source=label)
    print(json.dumps(stats, sort_keys=True))
    return 0


def run_compare_batch(args) -> int:
    from linepo.evaluation.batches import judge_batch, parse_pairs
    from linepo.stages.judges import load_judge_config

    if args.out.suffix != ".parquet":
        raise InputError(f"--out {args.out}: must end in .parquet")
    pairs = parse_pairs(args.pairs)
    config, label = load_judge_config(args.judge_config)
    print(json.dumps(judge_batch(pairs, config, args.cache_dir, args.out, source=label), sort_keys=True))
    return 0


def run_win_rates(args) -> int:
    from linepo.evaluation import winrates as ev
    from linepo.evaluation.batches import load_comparisons
    from linepo.evaluation.figures import heatmap

    spec = _spec(args.spec)
    comparisons = load_comparisons(spec["comparisons"], args.max_failed_fraction)
    labels, m, se, pairs = ev.win_rate_matrix(spec["checkpoints"], comparisons, resamples=args.bootstrap,
                                              seed=args.seed)
    heatmap(labels, m, se, args.figure, failed=ev.pair_matrix(labels, pairs, "failed"),
            judged=ev.pair_matrix(labels, pairs, "judged"))
    counts = ev.counts_csv(labels, pairs)
    if args.counts_csv:
        ev.write_text(args.counts_csv, counts)
    ev.write_text(args.se_csv, ev.matrix_csv(labels, se, avg=False))
    if args.hard_se_csv:
        ev.write_text(args.hard_se_csv, ev.matrix_csv(labels, ev.pair_matrix(labels, pairs, "hard_se"), avg=False))
    if args.hard_csv:
        ev.write_text(args.hard_csv, ev.matrix_csv(labels, ev.pair_matrix(labels, pairs, "hard_win_rate")))
    ev.write_text(args.pairs, ev.tsv(pairs))
    text = ev.matrix_csv(labels, m)
    ev.write_text(args.csv, text)  # last: the file the next rules wait for
    print(text + "\n" + counts, end="")
    for pair in pairs:
        if pair["missing"] and pair["judged"]:
            print(f"warning: {pair['row']} vs {pair['column']} is missing: {pair['failed']} of {pair['judged']} "
                  f"comparisons failed ({pair.get('failure_summary') or 'see the comparisons file'})",
                  file=sys.stderr)
    return 0


def run_curves(args) -> int:
    from linepo.evaluation import summary
    from linepo.evaluation import winrates as ev
    from linepo.evaluation.batches import load_comparisons
    from linepo.evaluation.figures import curves
    from linepo.schemas import read_table

    spec = _spec(args.spec)
    generations = {g: read_table(path, "samples") for g, path in spec["generations"].items()}
    comparisons = load_comparisons(spec["comparisons"], args.max_failed_fraction)
    rows = summary.curve_rows(spec["runs"], generations, comparisons, resamples=args.bootstrap, seed=args.seed)
    curves(rows, args.figure)
    ev.write_text(args.tsv, ev.tsv(rows))
    return 0


def run_summary(args) -> int:
    from linepo.evaluation import summary
    from linepo.evaluation import winrates as ev
    from linepo.schemas import read_table

    spec = _spec(args.spec)
    names = [c["label"] for c in spec["checkpoints"]]
    matrices = {}
    for flag, path in (("--matrix", args.matrix), ("--hard-matrix", args.hard_matrix)):
        if path is None:
            continue
        try:
            labels, values = ev.read_matrix_csv(path)
        except FileNotFoundError:
            raise InputError(f"{flag} {path}: file not found") from None
        if labels != names:
            raise InputError(f"{flag} {path}: rows {labels} are not the checkpoints {names}")
        matrices[flag] = values / 100.0
    counts = None
    if args.counts is not None:
        try:
            labels, judged, failed = ev.read_counts_csv(args.counts)
        except FileNotFoundError:
            raise InputError(f"--counts {args.counts}: file not found") from None
        if labels != names:
            raise InputError(f"--counts {args.counts}: rows {labels} are not the checkpoints {names}")
        counts = (judged, failed)
    lengths = {g: summary.mean_length(read_table(path, "samples")) for g, path in spec["generations"].items()}
    reports = {}
    for name, path in (spec.get("exploitability") or {}).items():
        try:
            reports[name] = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise InputError(f"{path}: file not found") from None
    rows = summary.summary_rows(names, matrices["--matrix"], spec["checkpoints"], lengths, reports,
                           hard=matrices.get("--hard-matrix"), counts=counts)
    text = ev.tsv(rows)
    ev.write_text(args.out, text)
    print(text, end="", file=sys.stderr)
    return 0


def run_export(args) -> int:
    from linepo.evaluation import winrates as ev
    from linepo.schemas import read_metadata, read_table

    generation = read_table(args.generations, "samples")
    prompts = read_table(args.prompts, "prompts")
    records = ev.alpaca_eval_records(generation, prompts, args.generator, prompts_meta=read_metadata(args.prompts))
    ev.write_json(args.out, records)
    print(f"wrote {len(records)} outputs of {args.generator} to {args.out}", file=sys.stderr)
    return 0
