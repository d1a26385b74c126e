"""The end-of-run summary table: what was tried, how the winner scored, and where it was published.

Plain text on purpose: it lands in terminals and in CronJob logs alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

METRIC_KEYS = ("accuracy", "precision", "recall", "f1", "mse", "mae", "r2")


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _format_score(trial: Mapping[str, Any]) -> str:
    if trial.get("score") is None:
        return "-"
    if trial.get("score_std") is not None:
        return f"{trial['score']:.4f} ± {trial['score_std']:.4f}"
    return f"{trial['score']:.4f}"


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
    version: int | None,
    path: Path | None,
    objective: str = "val_accuracy",
    gate: str | None = None,
    lower_is_better: bool = False,
) -> str:
    """Trials (best first), test metrics, the gate, then the published version and its directory."""
    sign = 1.0 if lower_is_better else -1.0
    ranked = sorted(trials, key=lambda t: (t.get("score") is None, sign * (t.get("score") or 0.0)))
    hp_names = sorted({name for t in ranked for name in t.get("hyperparameters", {})})
    cross_validated = any(t.get("fold_scores") for t in ranked)
    # Cross-validated trials: the objective is the mean over the folds, shown with their std.
    header = ["trial", "status", f"{objective} (cv mean ± std)" if cross_validated else objective, "epochs", *hp_names]
    rows = [
        [
            str(t.get("trial_id", "")),
            str(t.get("status", "")),
            _format_score(t),
            "-" if t.get("best_epoch") is None else str(t["best_epoch"]),
            *(_format_value(t.get("hyperparameters", {}).get(name, "-")) for name in hp_names),
        ]
        for t in ranked
    ]
    metric_rows = [[key, f"{float(metrics[key]):.4f}"] for key in METRIC_KEYS if key in metrics]
    sections = [
        "Tuning trials\n" + format_table(header, rows),
        "Test metrics\n" + format_table(["metric", "value"], metric_rows),
    ]
    if gate:
        sections.append(f"Gate: {gate}")
    sections.append(f"Published version {version} at {path}" if version is not None else "Nothing published")
    return "\n\n".join(sections)
