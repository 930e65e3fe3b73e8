"""The parts of a lineage's report that MLflow's run description shows too (lottery.mlflow_view):
the branch names of a summary and the compression table as Markdown.

They live apart from lottery.report, whose figures only the report stage draws: every stage that
publishes to MLflow imports lottery.records, and so mlflow_view and this module, and its code
stamp holds every module it can import (lottery.deps). Editing a figure reruns the report stage
alone.
"""

TICKET = "ticket"


def branches(summary):
    """The branches of a summary's rows: "ticket" and each control."""
    return [b for b in summary["rounds"][-1] if isinstance(summary["rounds"][-1][b], dict)]


def format_compression_table(reports):
    """The compression reports as Markdown: compact against dense, theoretical vs measured speedup."""
    lines = [
        "| round | form | params | MFLOPs | bytes | latency b1 / b64 (ms) | FLOPs speedup | measured b1 / b64 | timed on |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in reports:
        dense, compact = r["dense"], r["compact"]
        lines.append(
            f"| {r['round']} | {r['form']} | {compact['parameters']:,} / {dense['parameters']:,} "
            f"| {compact['flops'] / 1e6:.2f} / {dense['flops'] / 1e6:.2f} | {compact['bytes']:,} / {dense['bytes']:,} "
            f"| {compact['latency_ms_batch_1']:.2f} / {compact['latency_ms_batch_64']:.2f} "
            f"(dense {dense['latency_ms_batch_1']:.2f} / {dense['latency_ms_batch_64']:.2f}) "
            f"| {r['flops_speedup']:.2f}x | {r['measured_speedup_batch_1']:.2f}x / {r['measured_speedup_batch_64']:.2f}x "
            f"| {r['latency_device']} |"
        )
    return "\n".join(lines)
