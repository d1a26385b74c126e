"""Flags and entry point of `kerve train`; the lead's kerve/cli.py mounts these on its subcommand.

TensorFlow is imported only when training actually runs, so building the parser stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", type=Path, required=True, help="model repository root")
    parser.add_argument("--model-name", default="digits", help="model to publish a new version of")
    parser.add_argument("--dataset", choices=["digits"], default="digits", help="training data")
    parser.add_argument("--tuner", choices=["random"], default="random", help="KerasTuner search algorithm")
    parser.add_argument("--max-trials", type=_positive_int, default=2, help="tuning trials")
    parser.add_argument("--epochs", type=_positive_int, default=5, help="max epochs per trial")
    parser.add_argument("--batch-size", type=_positive_int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="seeds the split, the search and the weights")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="tuner checkpoints and TensorBoard logs, outside the repository (default: a new temp dir)",
    )
    parser.add_argument("--verbose", type=int, choices=[0, 1, 2], default=1, help="Keras progress output")


def main(args: argparse.Namespace) -> int:
    """Train and publish; 0 when a version was published, 1 when the run failed with a known error."""
    from kerve.repository import RepositoryError

    from .publish import ExportError
    from .train import TrainConfig, run_training
    from .tune import TuningError

    config = TrainConfig(
        repository=args.model_repository,
        model_name=args.model_name,
        dataset=args.dataset,
        tuner=args.tuner,
        max_trials=args.max_trials,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        work_dir=args.work_dir,
        verbose=getattr(args, "verbose", 1),
    )
    try:
        run_training(config)
    except (ValueError, RepositoryError, TuningError, ExportError) as exc:
        print(f"kerve train: error: {exc}", file=sys.stderr)
        return 1
    return 0
