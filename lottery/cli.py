"""`lottery` (or `python -m lottery`): project commands beside the DVC stages.

  lottery rounds N                 set the number of pruning rounds in params.yaml
  lottery replicates [--seeds S..] aggregate over seeds the lineages of params.yaml's params
  lottery sync                     complete MLflow from this workspace's DVC outputs
  lottery lineage list             the lineages in the tracking store
  lottery lineage show L           one lineage's round table
  lottery lineage diff A B         params, per-round metrics, mask overlap and ranks of two lineages
  lottery lineage reproduce L      re-run a lineage from its commit and params; do results match?
  lottery warm status | stop       the warm worker that serves this interpreter: its pid, start, log; stop it
  lottery compare A B ...          lineages or seed groups side by side at equal weights remaining
  lottery sweep -S KEY=V1,V2 ...   one DVC experiment per point of a grid, on a Ray cluster
  lottery queue start --workers N  DVC's queue workers, each with its share of the GPUs and cores
"""

import argparse
import datetime
import json
import os
import re
import sys
import textwrap
import time
from pathlib import Path

import yaml

from lottery import hparams, paths, queue_workers, terminal, warm, warm_status, yaml12
from lottery.errors import ParamsError, UserError
from lottery.io import read_text, write_text


def set_rounds(params_path, count):
    """Rewrite the `rounds` section of a params file for `count` rounds, keeping the rest as written."""
    if count < 1:
        raise ParamsError(f"rounds = {count}: must be >= 1")
    path = Path(params_path)
    text = read_text(path)
    block = yaml.safe_dump({"rounds": hparams.rounds_section(count)}, default_flow_style=None, sort_keys=False)
    section = re.compile(r"^rounds:.*\n(?:(?:[ \t]+.*|[ \t]*)\n)*", re.MULTILINE)
    if not section.search(text):
        raise ParamsError(f"{path}: has no top-level `rounds:` section")
    updated = section.sub(lambda _: block, text, count=1)
    from lottery import validation  # the registries and torch: only for commands that start work

    validation.from_dict(yaml12.load(updated))
    write_text(path, updated)


def table(rows, columns=None):
    """Rows of dicts as an aligned plain-text table; floats with 4 significant decimals."""
    columns = columns or list(rows[0]) if rows else []
    cell = lambda v: "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def format_diff(result):
    lines = [f"a: {result['a']}", f"b: {result['b']}", ""]
    if result["params"]:
        lines += ["params that differ:", table([{"param": k, **v} for k, v in result["params"].items()]), ""]
    else:
        lines += ["params: identical", ""]
    if result["code"]:
        lines += [f"code differs: a {result['code']['a']}, b {result['code']['b']} (lottery.code tags)", ""]
    metric_rows = [
        {"round": r["round"], "metric": key, **values} for r in result["rounds"] for key, values in r["metrics"].items()
    ]
    lines += ["metrics per round (delta = b - a):", table(metric_rows), ""]
    overlap_rows = [
        {"round": r["round"], "layer": layer, **values}
        for r in result["rounds"]
        for layer, values in (r["masks"] or {}).items()
    ]
    unreachable = [r["round"] for r in result["rounds"] if r["masks"] is None]
    lines += ["mask overlap per round and layer:", table(overlap_rows) if overlap_rows else "(no masks reachable)"]
    if unreachable:
        lines.append(f"masks not reachable for rounds {unreachable}")
    rank_rows = [{"round": r["round"], "layer": layer, **values} for r in result["rounds"] for layer, values in r["ranks"].items()]
    if rank_rows:  # a factorized lineage ('' where the other is dense there)
        lines += ["", "ranks per round and layer:", table(rank_rows)]
    for side in ("a", "b"):
        if result[f"rounds_only_in_{side}"]:
            lines.append(f"rounds only in {side}: {result[f'rounds_only_in_{side}']}")
    return "\n".join(lines)


def _catalog(args):
    from lottery import lineage_catalog, mlflow_connection

    tracking_hp = hparams.load_section("tracking", args.params)  # the store alone: see hparams.load_section
    uri = args.uri or mlflow_connection.tracking_uri(tracking_hp)
    return lineage_catalog.LineageCatalog(uri, args.experiment or tracking_hp.experiment)


def _emit(args, data, text):
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def cmd_rounds(args):
    set_rounds(args.params, args.count)
    print(f"{args.params}: {args.count} rounds")


def cmd_replicates(args):
    from lottery import replicates, report, validation

    summary = replicates.summarize(validation.load(args.params), args.seeds)
    print(report.format_table(summary))
    print(f"{summary['seeds']} seeds; {paths.replicates_summary()}, {paths.replicates_figure()}")


def cmd_sync(args):
    from lottery import validation
    from lottery.steps.report import sync

    ids = sync(validation.load(args.params), fresh_probe=True)
    if ids["parent_run_id"] is None:
        sys.exit("error: the tracking store could not be reached; nothing was synced")
    rounds = ", ".join(f"{r}: {run}" for r, run in ids["round_run_ids"].items())
    print(f"synced lineage run {ids['parent_run_id']}; round runs {rounds}")


def cmd_list(args):
    from lottery import lineage

    catalog = _catalog(args)
    parents, found = catalog.parents(), []
    with terminal.Bar("reading lineages", len(parents)) as bar:
        for parent in parents:
            found.append(catalog.load(parent))
            bar.step()
    _emit(args, [lineage.summary_row(each) for each in found], format_list(found))


def format_list(found):
    """The lineages as a table as wide as the terminal: what tells them apart (lineage.listing)."""
    from lottery import lineage

    if not found:
        return "no lineages"
    rows, columns = lineage.listing(found)
    text, left_out = terminal.fit(rows, columns, lineage.LISTED, table)
    if left_out:
        text += "\n" + textwrap.fill(f"also differ (a wider terminal shows them): {', '.join(left_out)}", terminal.width())
    return text


def cmd_show(args):
    from lottery import lineage

    found = _catalog(args).find(args.lineage)
    rows = lineage.round_table(found)
    _emit(args, {"lineage": lineage.summary_row(found), "rounds": rows}, f"{found.name}\n{table(rows)}")


def cmd_diff(args):
    from lottery import lineage

    catalog = _catalog(args)
    result = lineage.diff(catalog, catalog.find(args.a), catalog.find(args.b), progress=terminal.Bar)
    result["differs"] = lineage.differs(result)
    _emit(args, result, format_diff(result) + f"\n\n{'lineages differ' if result['differs'] else 'no differences'}")


def cmd_reproduce(args):
    from lottery import reproduce

    catalog = _catalog(args)
    result = reproduce.reproduce(catalog, catalog.find(args.lineage), Path.cwd(), keep=args.keep, progress=terminal.Bar)
    mismatches = [c for c in result["checks"] if not c["match"]]
    lines = [table(mismatches)] if mismatches else []
    if result["differences"]:
        lines += ["what differs between the recorded run and this one:", table(result["differences"])]
    elif mismatches:
        lines.append("the code and every round's environment match the record: the code is not deterministic here")
    lines.append("reproduced: every metric and mask hash matches" if result["match"] else "MISMATCH")
    _emit(args, result, "\n".join(lines))
    if not result["match"]:
        sys.exit(1)


def format_warm(found, stopped=False):
    """`lottery warm status` (or `stop`, `stopped`) in lines: the worker's pid, since when, its idle
    limit, socket and log; or that none serves this interpreter."""
    log = found["log"] or "(none yet)"
    if found["pid"] is None:
        off = " (LOTTERY_WARM=0: stages run without one)" if os.environ.get("LOTTERY_WARM") == "0" else ""
        lines = [f"no warm worker serves {sys.executable}{off}", f"socket: {found['socket']}", f"log:    {log}"]
        return "\n".join(lines + (["nothing to stop"] if stopped else []))
    since = datetime.datetime.fromtimestamp(found["since"]).strftime("%Y-%m-%d %H:%M:%S")
    minutes = (time.time() - found["since"]) / 60
    lines = [
        f"{'stopped warm worker' if stopped else 'warm worker'} {found['pid']}, {found['state']} since {since} ({minutes:.0f} min)",
        f"serves: {sys.executable}; stops after {found['idle_seconds']:g} s without a stage",
        f"socket: {found['socket']}",
        f"log:    {log}",
    ]
    return "\n".join(lines)


def cmd_warm_status(args):
    found = warm_status.status()
    _emit(args, found, format_warm(found))


def cmd_warm_stop(args):
    try:
        found = warm_status.stop()
    except OSError as err:
        raise UserError(str(err)) from err
    _emit(args, found, format_warm(found, stopped=True))


def cmd_compare(args):
    from lottery import compare

    catalog = _catalog(args)
    result = compare.compare(catalog, args.lineages, all_seeds=args.all_seeds, progress=terminal.Bar)
    text = compare.format_table(result)
    compare.figure(result, args.figure)
    if args.table:
        write_text(args.table, text + "\n")
    if args.log:
        result["run_id"] = compare.log(catalog, result, text, args.figure)
    logged = f"; logged to MLflow run {result['run_id']}" if args.log else ""
    _emit(args, result, f"{text}\n\nfigure: {args.figure}{logged}")


def cmd_sweep(args):
    from lottery.sweep import driver

    options = driver.Options(
        settings=args.set, seeds=args.seeds, address=args.address, gpus_per_experiment=args.gpus_per_experiment,
        cpus_per_experiment=args.cpus_per_experiment, git_remote=args.git_remote, dvc_remote=args.dvc_remote,
        retries=args.retries, workdir=args.workdir, keep=args.keep,
    )
    try:
        with terminal.Bar("sweep", 0) as bar:
            outcome = driver.sweep(options, bar=bar)
    except KeyboardInterrupt:
        # Ray cancels the tasks of a driver that ends, and each point's runner and stages go with its task.
        sys.exit("error: stopped by SIGINT: the points under way stop; the same `lottery sweep` runs the unfinished ones")
    print(format_sweep(outcome))
    if outcome.failed:
        sys.exit(1)


def format_sweep(outcome):
    """The sweep's last lines: how many points ran, were finished before and failed; a table of the failures."""
    lines = [f"{len(outcome.ran)} ran, {len(outcome.finished_before)} finished before, {len(outcome.failed)} failed"]
    if outcome.failed:
        rows = [{"point": point.name, "params": point.label(), "error": error} for point, error in outcome.failed]
        lines += ["", table(rows)]
    if outcome.ran:
        lines += ["", "`dvc exp show` lists them; `lottery compare` reads their lineages from MLflow"]
    return "\n".join(lines)


def _number_from(low, inclusive):
    """An argparse type: a number >= `low` (> `low` unless `inclusive`)."""
    def parse(text):
        value = float(text)
        if value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"{text}: must be {'>=' if inclusive else '>'} {low:g}")
        return value

    return parse


def _sweep_parser(commands):
    sweep = commands.add_parser("sweep", help="one DVC experiment per point of a grid, on a Ray cluster")
    sweep.add_argument("-S", "--set", action="append", default=[], metavar="KEY=V1[,V2...]",
                       help="a params key and its values (YAML; commas outside brackets separate values); repeat for a grid")
    sweep.add_argument("--seeds", type=int, nargs="+", default=[], help="every point once per seed")
    sweep.add_argument("--address", help="join the Ray cluster at this address (default: start a local one for the sweep)")
    sweep.add_argument("--gpus-per-experiment", type=_number_from(0, inclusive=True), help="GPUs each experiment gets (default: 1 where the cluster has GPUs, else 0)")
    sweep.add_argument("--cpus-per-experiment", type=_number_from(0, inclusive=False), default=1, help="CPUs each experiment gets, and as many torch threads (default: 1)")
    sweep.add_argument("--git-remote", default="origin", help="where the commit goes and the experiments come back (default: origin)")
    sweep.add_argument("--dvc-remote", help="the DVC remote for outputs (default: the committed config's default remote)")
    sweep.add_argument("--retries", type=int, default=3, help="times a point runs again after its node died (default: 3)")
    sweep.add_argument("--workdir", help="folder on each node for the workspaces (default: $TMPDIR/lottery-sweep-<uid>)")
    sweep.add_argument("--keep", action="store_true", help="keep each finished point's workspace and log")
    sweep.set_defaults(handler=cmd_sweep)


def parser():
    main = argparse.ArgumentParser(prog="lottery", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    main.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    commands = main.add_subparsers(dest="command", required=True)
    rounds = commands.add_parser("rounds", help="set the number of pruning rounds in params.yaml")
    rounds.add_argument("count", type=int)
    rounds.set_defaults(handler=cmd_rounds)
    replicates = commands.add_parser("replicates", help="aggregate lineages that differ in seed alone")
    replicates.add_argument("--seeds", type=int, nargs="+", help="these seeds, each of which must have a lineage (default: every seed found)")
    replicates.set_defaults(handler=cmd_replicates)
    commands.add_parser("sync", help="complete MLflow from the DVC outputs here").set_defaults(handler=cmd_sync)
    compare = commands.add_parser("compare", help="lineages or seed groups side by side at equal weights remaining")
    compare.add_argument("lineages", nargs="+", metavar="[LABEL=]NAME[:CONTROL]",
                         help="a lineage (parent run id, DVC experiment name, run name or lineage hash prefix) or a "
                         "replicate group hash prefix; :CONTROL compares that control branch (e.g. :random_sparse)")
    compare.add_argument("--all-seeds", action="store_true", help="a named lineage stands for every seed of its replicate group")
    compare.add_argument("--figure", default="compare.png", help="the PNG to write (default: compare.png)")
    compare.add_argument("--table", help="also write the table (Markdown) to this file")
    compare.add_argument("--log", action="store_true", help="log table and figure as artifacts of a comparison run in MLflow")
    compare.add_argument("--json", action="store_true", help="machine-readable output")
    compare.add_argument("--uri", help="tracking URI (default: params' tracking.uri or $MLFLOW_TRACKING_URI)")
    compare.add_argument("--experiment", help="MLflow experiment (default: params' tracking.experiment)")
    compare.set_defaults(handler=cmd_compare)
    _sweep_parser(commands)
    lineage = commands.add_parser("lineage", help="list, show, diff and reproduce lineages").add_subparsers(
        dest="action", required=True
    )
    actions = {
        "list": (cmd_list, []),
        "show": (cmd_show, ["lineage"]),
        "diff": (cmd_diff, ["a", "b"]),
        "reproduce": (cmd_reproduce, ["lineage"]),
    }
    for action, (handler, positional) in actions.items():
        sub = lineage.add_parser(action)
        for name in positional:
            sub.add_argument(name, help="parent run id, DVC experiment name, run name or lineage hash prefix")
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        sub.add_argument("--uri", help="tracking URI (default: params' tracking.uri or $MLFLOW_TRACKING_URI)")
        sub.add_argument("--experiment", help="MLflow experiment (default: params' tracking.experiment)")
        if action == "reproduce":
            sub.add_argument("--keep", action="store_true", help="keep the worktree and its outputs")
        sub.set_defaults(handler=handler)
    worker = commands.add_parser("warm", help="the warm worker that serves this interpreter").add_subparsers(dest="action", required=True)
    for action, handler, text in (
        ("status", cmd_warm_status, "its pid, since when it listens, its socket and log file"),
        ("stop", cmd_warm_stop, "stop it (the stages it runs finish; the next stage starts a new one)"),
    ):
        sub = worker.add_parser(action, help=text)
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        sub.set_defaults(handler=handler)
    queue_workers.add_parser(commands)
    return main


def main(argv=None):
    args = parser().parse_args(argv)
    if argv is None:
        # Run as a program (`lottery`, `python -m lottery`): in the warm worker when one answers
        # (`lottery warm`, which is about that worker, and `lottery sweep` run here), printing its own lines only.
        if args.command not in ("warm", "sweep"):  # sweep: Ray's processes are no warm worker's forks
            warm.hand_off("__main__", module="lottery")
        terminal.quiet_libraries()
    try:
        args.handler(args)
    except UserError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
