"""``linepo verify``: check that every artefact of a results tree is what was written, and not stale.

    linepo verify              # results/ of the workflow in the current folder
    linepo verify results/

Every parquet file is checked against the digest and row count recorded in its metadata,
every model folder against the sha256 of each file in its ``linepo_provenance.json``, and
every input an artefact records against that input as it is now (an output made from an
input that has changed since is stale). Prints one line per problem and a summary; with
problems, the ``snakemake --forcerun`` command that rebuilds them and everything made from
them, and exits 1; exits 0 when the tree is clean. Snakemake cannot see these: a file
rewritten inside a policy folder leaves the folder's mtime alone. A line names the
numerics environment that computed the tree, or warns that the tree mixes several
(:mod:`linepo.numerics`; not a problem of the files, but its numbers are then no one realisation).
"""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("verify", help="check a results tree's artefacts against their recorded digests",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="results", help="the results folder (default results)")
    parser.set_defaults(func=run)


def run(args) -> int:
    import os
    import shlex

    from linepo import numerics
    from linepo.provenance import forcerun_hint, verify_tree

    report = verify_tree(args.root)
    for path, reason in report["problems"]:
        print(f"{path}: {reason}")
    environments = numerics.describe_all(numerics.merge(*report["environments"]))
    if environments:
        print(f"linepo verify: {args.root}: {environments}")
    checked = f"{report['tables']} parquet files and {report['folders']} model folders"
    unrecorded = f" ({report['unrecorded']} parquet files record no digest)" if report["unrecorded"] else ""
    if not report["problems"]:
        print(f"linepo verify: {args.root}: {checked} match their recorded digests, none stale{unrecorded}")
        return 0
    where = "" if os.path.samefile(report["workflow"], ".") else f"cd {shlex.quote(str(report['workflow']))} && "
    print(f"linepo verify: {args.root}: {len(report['problems'])} problem(s) in {checked}{unrecorded}; "
          "to rebuild them and everything made from them (add your usual --configfile/--profile):")
    print(f"  {where}{forcerun_hint(shlex.quote(p) for p in report['rebuild'])}")
    return 1
