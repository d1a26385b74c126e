"""The `kerve` command. Subcommands import their heavy dependencies lazily, so `kerve predict` and
`kerve models` work in a client-only install without TensorFlow."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        default="localhost:8500",
        help="server address host:port, or dns:///host:port for every address behind a name (default localhost:8500)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call, retries included")
    parser.add_argument("--tls-ca", type=Path, help="PEM CA bundle that signed the server certificate: use TLS")
    parser.add_argument("--tls-cert", type=Path, help="PEM client certificate, for servers that require mutual TLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument("--tls-server-name", help="name to verify the server certificate against (default: host)")
    parser.add_argument("--token-file", type=Path, help="file holding a bearer token sent as 'authorization: Bearer'")


def _client(args: argparse.Namespace) -> Any:
    """A Client from the --target/--timeout/--tls-*/--token-file flags; ValueError for unusable flags or files."""
    from kerve.client import Client, TLSConfig, read_token_file

    tls = None
    if args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name:
        for flag, path in (("--tls-ca", args.tls_ca), ("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
            if path is not None and not path.is_file():
                raise ValueError(f"{flag} {path} is not a file")
        tls = TLSConfig(
            root_certificates=args.tls_ca,
            certificate_chain=args.tls_cert,
            private_key=args.tls_key,
            server_name=args.tls_server_name,
        )
    token = read_token_file(args.token_file) if args.token_file else None
    return Client(args.target, timeout=args.timeout, tls=tls, token=token)


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from kerve.server import settings

        for module in ("tensorflow", "grpc_health"):  # found, not imported: a --processes parent needs neither
            if importlib.util.find_spec(module) is None:
                raise ModuleNotFoundError(f"No module named {module!r}", name=module)
    except ModuleNotFoundError as exc:
        return _missing("serve", "server", exc)

    try:
        server_settings = settings.from_args(args)
    except ValueError as exc:
        print(f"kerve serve: {exc}", file=sys.stderr)
        return 2
    if server_settings.processes > 1 and server_settings.process_index is None:
        from kerve.server import processes  # the supervisor: no TensorFlow or grpc in this process

        return processes.supervise(server_settings, args.argv)
    from kerve.server import app

    return app.main(server_settings)


def _cmd_train(args: argparse.Namespace) -> int:
    try:
        import keras_tuner  # noqa: F401

        from kerve.training import cli as training_cli
    except ModuleNotFoundError as exc:
        return _missing("train", "training", exc)
    return training_cli.main(args)


def _cmd_retrain(args: argparse.Namespace) -> int:
    try:
        import keras_tuner  # noqa: F401

        from kerve.training import cli as training_cli
    except ModuleNotFoundError as exc:
        return _missing("retrain", "training", exc)
    return training_cli.retrain_main(args)


def _parse_input(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--input expects NAME=FILE.npy, got {spec!r}")
    return name, Path(path)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535 (0: a free one), got {value}")
    return value


def _writable_dir_problem(directory: Path) -> str | None:
    """Create `directory` if needed and prove a file can be written in it: None, or why not."""
    import tempfile

    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        if isinstance(exc, FileExistsError) and not directory.is_dir():
            return "not a directory"
        return exc.strerror or str(exc)
    return None


def _cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from kerve.client import KerveError

    inputs = {}
    for name, path in args.input:
        try:
            inputs[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            print(f"kerve predict: cannot read {path}: {exc}", file=sys.stderr)
            return 2
    if args.save_dir is not None:  # before the request: an unusable --save-dir must not cost an inference
        problem = _writable_dir_problem(args.save_dir)
        if problem is not None:
            print(f"kerve predict: cannot write to {args.save_dir}: {problem}", file=sys.stderr)
            return 2
    try:
        client = _client(args)
    except ValueError as exc:
        print(f"kerve predict: {exc}", file=sys.stderr)
        return 2
    with client:
        try:
            result = client.infer(args.model, inputs, version=args.version, outputs=args.output or None)
        except KerveError as exc:
            print(f"kerve predict: {exc}", file=sys.stderr)
            return 1
    print(f"model {result.model_name} version {result.model_version}")
    np.set_printoptions(threshold=64, precision=5, suppress=True)
    for name, array in result.outputs.items():
        print(f"{name}: dtype={array.dtype} shape={list(array.shape)}")
        print(array)
        if array.ndim == 2 and array.shape[1] > 1 and array.dtype.kind == "f":
            print(f"{name} argmax: {array.argmax(axis=1).tolist()}")
        if args.save_dir is not None:
            try:
                np.save(args.save_dir / f"{name}.npy", array)
            except OSError as exc:  # the directory changed since the check, or the disk is full
                print(f"kerve predict: cannot write to {args.save_dir}: {exc.strerror or exc}", file=sys.stderr)
                return 2
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from kerve.client import KerveError

    try:
        client = _client(args)
    except ValueError as exc:
        print(f"kerve models: {exc}", file=sys.stderr)
        return 2
    with client:
        try:
            entries = client.models()
        except KerveError as exc:
            print(f"kerve models: {exc}", file=sys.stderr)
            return 1
    print(f"{'MODEL':<24} {'VERSION':>7}  {'STATE':<10} REASON")
    for e in entries:
        print(f"{e.name:<24} {e.version:>7}  {e.state:<10} {e.reason}")
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    for module in ("keras_tuner", "tensorflow", "sklearn", "grpc_health"):  # found, not imported: fast
        if importlib.util.find_spec(module) is None:
            return _missing("quickstart", "all", ModuleNotFoundError(f"No module named {module!r}", name=module))
    from kerve import quickstart

    return quickstart.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kerve", description="Train Keras models and serve them over gRPC.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve a model repository over gRPC (KServe V2)")
    from kerve.server.settings import add_arguments as add_server_arguments  # no TF import at this point

    add_server_arguments(serve)
    serve.set_defaults(func=_cmd_serve)

    train = sub.add_parser("train", help="tune, train, evaluate and publish a model version")
    from kerve.training.cli import add_arguments as add_train_arguments  # argparse only, no TF

    add_train_arguments(train)
    train.set_defaults(func=_cmd_train)

    retrain = sub.add_parser(
        "retrain",
        help="scheduled retraining: train, gate against the current version, publish if not worse",
        description="Exit codes: 0 published, 3 rejected by the gate (nothing published), 1 failed, 2 bad config.",
    )
    from kerve.training.cli import add_retrain_arguments  # argparse only, no TF

    add_retrain_arguments(retrain)
    retrain.set_defaults(func=_cmd_retrain)

    predict = sub.add_parser("predict", help="send .npy inputs to a served model and print the outputs")
    _add_target(predict)
    predict.add_argument("--model", required=True)
    predict.add_argument("--version", default=None, help="model version (default: latest)")
    predict.add_argument("--input", action="append", type=_parse_input, required=True, metavar="NAME=FILE.npy")
    predict.add_argument("--output", action="append", metavar="NAME", help="output to return (default: all)")
    predict.add_argument("--save-dir", type=Path, help="write each output as NAME.npy here")
    predict.set_defaults(func=_cmd_predict)

    models = sub.add_parser("models", help="list the model versions a server knows and their state")
    _add_target(models)
    models.set_defaults(func=_cmd_models)

    quick = sub.add_parser(
        "quickstart",
        help="train on digits, serve, predict over gRPC, report accuracy",
        description="Exit codes: 0 done, 1 the run failed (training, serving or a request), 2 bad flags or paths.",
    )
    quick.add_argument("--model-repository", type=Path, default=Path("models"), help="default ./models")
    quick.add_argument("--port", type=_port, default=0, help="gRPC port on 127.0.0.1 (default 0: a free one)")
    quick.add_argument("--max-trials", type=_positive_int, default=2, help="tuning trials (default 2)")
    quick.add_argument("--epochs", type=_positive_int, default=8, help="max epochs per trial (default 8)")
    quick.set_defaults(func=_cmd_quickstart)
    return parser


def _missing(command: str, extra: str, exc: ModuleNotFoundError) -> int:
    print(f"kerve {command}: {exc}; install the [{extra}] extra: pip install 'kerve[{extra}]'", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `serve --processes N` starts its children with the same arguments
    return int(args.func(args))
