"""Flags and entry points of `kerve train` and `kerve retrain`; kerve/cli.py mounts these on its subcommands.

TensorFlow is imported only when training actually runs, so building the parser stays instant.

Exit codes: 0 a version was published (a non-chief worker of a multi-worker cluster: its share of the training
finished; the chief publishes); 3 `kerve retrain` only: the gate rejected the candidate and nothing
was published; 1 the run failed (bad data, failed search, export mismatch, a repository error such as a file
system refusing a write, `kerve retrain` only: current version not comparable); 2 the configuration is invalid,
a repository or work dir that is not a writable directory included (nothing was trained).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import config as config_module

EXIT_PUBLISHED = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2
EXIT_REJECTED = 3


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`kerve train`: a YAML config (--config) and/or flags; a flag given on the command line wins."""
    parser.add_argument("--config", type=Path, default=None, help="YAML training configuration (see README)")
    parser.add_argument("--model-repository", type=Path, default=None, help="model repository root")
    parser.add_argument("--model-name", default=None, help="model to publish a new version of (default digits)")
    parser.add_argument("--dataset", choices=list(config_module.SOURCES), default=None, help="data source")
    parser.add_argument("--data-path", type=Path, default=None, help="file or directory of the data source")
    parser.add_argument("--family", choices=list(config_module.FAMILIES), default=None, help="model family")
    parser.add_argument("--tuner", choices=list(config_module.TUNERS), default=None, help="KerasTuner search")
    parser.add_argument("--strategy", choices=list(config_module.STRATEGIES), default=None)
    parser.add_argument("--max-trials", type=_positive_int, default=None, help="tuning trials (default 2)")
    parser.add_argument(
        "--cv-folds", type=int, default=None, help="score each trial by k-fold cross-validation (k >= 2; 0 off)"
    )
    parser.add_argument("--epochs", type=_positive_int, default=None, help="max epochs per trial (default 5)")
    parser.add_argument("--batch-size", type=_positive_int, default=None, help="default 64")
    parser.add_argument("--seed", type=int, default=None, help="seeds the split, the search and the weights")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="tuner checkpoints and TensorBoard logs, outside the repository (default: a new temp dir)",
    )
    parser.add_argument("--verbose", type=int, choices=[0, 1, 2], default=None, help="Keras progress output")


def add_retrain_arguments(parser: argparse.ArgumentParser) -> None:
    """`kerve retrain`: the scheduled job; the config file is required, a few flags may override it."""
    parser.add_argument("--config", type=Path, required=True, help="YAML training configuration with a gate")
    parser.add_argument("--model-repository", type=Path, default=None, help="overrides `repository`")
    parser.add_argument("--work-dir", type=Path, default=None, help="overrides `work_dir`")
    parser.add_argument("--verbose", type=int, choices=[0, 1, 2], default=None)


def config_from_args(args: argparse.Namespace) -> config_module.TrainConfig:
    """The validated config: the YAML file (if any), then every flag given on the command line over it."""
    overrides: dict[str, Any] = {
        "repository": getattr(args, "model_repository", None),
        "model_name": getattr(args, "model_name", None),
        "dataset": getattr(args, "dataset", None),
        "family": getattr(args, "family", None),
        "tuner": getattr(args, "tuner", None),
        "strategy": getattr(args, "strategy", None),
        "max_trials": getattr(args, "max_trials", None),
        "cv_folds": getattr(args, "cv_folds", None),
        "epochs": getattr(args, "epochs", None),
        "batch_size": getattr(args, "batch_size", None),
        "seed": getattr(args, "seed", None),
        "work_dir": getattr(args, "work_dir", None),
        "verbose": getattr(args, "verbose", None),
        "data_path": getattr(args, "data_path", None),
    }
    if args.config is not None:
        return config_module.load(args.config, overrides)
    return config_module.from_mapping({}, overrides)


def main(args: argparse.Namespace) -> int:
    """`kerve train`: 0 when a version was published, 2 for an invalid config, 1 when the run failed."""
    return _run(args, "train", enforce_gate=False)


def retrain_main(args: argparse.Namespace) -> int:
    """`kerve retrain`: 0 published, 3 rejected by the gate (nothing published), 2 bad config, 1 failed."""
    return _run(args, "retrain", enforce_gate=True)


def _run(args: argparse.Namespace, command: str, enforce_gate: bool) -> int:
    from kerve.repository import RepositoryError

    try:
        config = config_from_args(args)
    except (config_module.ConfigError, RepositoryError) as exc:
        print(f"kerve {command}: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG

    from .data import DataError
    from .gate import BaselineError
    from .publish import ExportError
    from .strategy import StrategyError
    from .train import run_training
    from .tune import TuningError

    try:
        result = run_training(config, enforce_gate=enforce_gate)
    except config_module.ConfigError as exc:  # found once the data is loaded (cv_folds vs class sizes)
        print(f"kerve {command}: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except (ValueError, DataError, RepositoryError, TuningError, ExportError, BaselineError, StrategyError) as exc:
        print(f"kerve {command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # the repository or work dir went away or became unwritable during the run
        print(f"kerve {command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        # A TensorFlow op failing mid-run (a dtype or shape the model cannot take, out of memory): a failed run
        # with its message, not a traceback. TensorFlow is looked up only once the run has imported it.
        tf = sys.modules.get("tensorflow")
        if tf is None or not isinstance(exc, tf.errors.OpError):
            raise
        message = getattr(exc, "message", exc)
        print(f"kerve {command}: error: TensorFlow {type(exc).__name__}: {message}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_PUBLISHED if result.published or not result.chief else EXIT_REJECTED
