"""`python -m lottery` / `lottery`: project commands that are not pipeline stages."""

import argparse
import re
import sys
from pathlib import Path

import yaml

from lottery import hparams, paths
from lottery.io import write_text
from lottery.replicates import ReplicateError


def set_rounds(params_path, count):
    """Rewrite the `rounds` section of a params file for `count` rounds, keeping the rest as written."""
    if count < 1:
        raise hparams.ParamsError(f"rounds = {count}: must be >= 1")
    path = Path(params_path)
    text = path.read_text()
    block = yaml.safe_dump({"rounds": hparams.rounds_section(count)}, default_flow_style=None, sort_keys=False)
    section = re.compile(r"^rounds:.*\n(?:(?:[ \t]+.*|[ \t]*)\n)*", re.MULTILINE)
    if not section.search(text):
        raise hparams.ParamsError(f"{path}: has no top-level `rounds:` section")
    updated = section.sub(lambda _: block, text, count=1)
    hparams.from_dict(yaml.safe_load(updated))
    write_text(path, updated)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="lottery", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    rounds = commands.add_parser("rounds", help="set the number of pruning rounds in params.yaml")
    rounds.add_argument("count", type=int)
    rounds.add_argument("--params", default="params.yaml")
    replicates = commands.add_parser(
        "replicates", help="aggregate over seeds the lineages that differ from params.yaml's in the seed alone"
    )
    replicates.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        if args.command == "rounds":
            set_rounds(args.params, args.count)
            print(f"{args.params}: {args.count} rounds")
        else:
            from lottery import replicates as replicates_module, report

            summary = replicates_module.summarize(hparams.load(args.params))
            print(report.format_table(summary))
            print(f"{summary['seeds']} seeds; {paths.replicates_summary()}, {paths.replicates_figure()}")
    except (hparams.ParamsError, ReplicateError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
