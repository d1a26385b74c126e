"""The end-of-run summary table: what was tried, how the winner scored, and where it was published.

Plain text on purpose: it lands in terminals and in CronJob logs alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

METRIC_KEYS = ("accuracy", "precision", "recall", "f1")


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, ["-" * w for w in widths], *rows]
    ]
    return "\n".join(lines)


def format_summary(
    trials: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    version: int,
    path: Path,
    objective: str = "val_accuracy",
) -> str:
    """Trials (best first), test metrics, then the published version and its directory."""
    ranked = sorted(trials, key=lambda t: (t.get("score") is None, -(t.get("score") or 0.0)))
    hp_names = sorted({name for t in ranked for name in t.get("hyperparameters", {})})
    header = ["trial", "status", objective, "epochs", *hp_names]
    rows = [
        [
            str(t.get("trial_id", "")),
            str(t.get("status", "")),
            "-" if t.get("score") is None else f"{t['score']:.4f}",
            "-" if t.get("best_epoch") is None else str(t["best_epoch"]),
            *(_format_value(t.get("hyperparameters", {}).get(name, "-")) for name in hp_names),
        ]
        for t in ranked
    ]
    metric_rows = [[key, f"{float(metrics[key]):.4f}"] for key in METRIC_KEYS if key in metrics]
    return "\n\n".join(
        [
            "Tuning trials\n" + format_table(header, rows),
            "Test metrics\n" + format_table(["metric", "value"], metric_rows),
            f"Published version {version} at {path}",
        ]
    )
