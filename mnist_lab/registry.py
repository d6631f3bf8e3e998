"""The MLflow model of a run: logged, loaded (or rebuilt from best.pth), re-evaluated,
registered and served.

    mnist-lab evaluate --run RUN_ID
    mnist-lab register --parent SWEEP_RUN_ID --name mnist-cnn
    mnist-lab serve --model models:/mnist-cnn/latest --port 5001
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mnist_lab.errors import ModelSourceError
from mnist_lab.store import client_for


def model_from_files(config_path, state_path):
    """served.model_from_files, imported when used: it brings torch and MLflow's pyfunc, which
    every mnist-lab command would otherwise load at start-up (this module adds the parsers)."""
    from mnist_lab.served import model_from_files as build

    return build(config_path, state_path)


def logged_model_id(client, run_id: str, uri: str | None) -> str:
    """The id of the run's model (see `served`), logged now from its config.yaml and best.pth
    if the run has none (a sweep's children, or tracking.log_model=false). The run keeps its
    status and end time: MLflow's logging reopens it for a moment."""
    run = client.get_run(run_id)
    if not run.outputs.model_outputs:
        config, state = run_files(run_id, uri)
        model_from_files(config, state)  # a config and weights that build a model, or one line
        from mnist_lab.served import log_digit_model

        try:
            log_digit_model(run_id, config, state)
        finally:  # a failed export leaves the run as it was, not FAILED by MLflow's start_run
            client.set_terminated(run_id, run.info.status, end_time=run.info.end_time)
        run = client.get_run(run_id)
    return run.outputs.model_outputs[0].model_id


def run_files(run_id: str, uri: str | None) -> tuple[Path, Path]:
    """The run's config.yaml and best.pth, downloaded."""
    client = client_for(uri)
    try:
        config = client.download_artifacts(run_id, "config.yaml")
        state = client.download_artifacts(run_id, "best.pth")
    except Exception as err:
        raise ModelSourceError(f"run {run_id}: config.yaml or best.pth not found ({err})") from None
    return Path(config), Path(state)


def load_model(run: str | None = None, registered: str | None = None,
               checkpoint: str | None = None, config: str | None = None,
               uri: str | None = None) -> torch.nn.Module:
    """One of: an MLflow run's best model, a `models:/NAME/VERSION` URI, or best.pth + config."""
    if run:
        return model_from_files(*run_files(run, uri))[0]
    if registered:
        import mlflow

        client_for(uri)  # sets the tracking URI, checked
        try:
            flavors = mlflow.models.get_model_info(registered).flavors
            if "pytorch" in flavors:  # logged by an earlier version: an exported (pt2) graph
                return mlflow.pytorch.load_model(registered)
            return mlflow.pyfunc.load_model(registered).unwrap_python_model().net
        except Exception as err:
            raise ModelSourceError(f"{registered}: cannot load ({err})") from None
    if checkpoint and config:
        return model_from_files(Path(config), Path(checkpoint))[0]
    raise ModelSourceError("name a model: --run RUN_ID, --model models:/NAME/VERSION, or "
                           "--checkpoint best.pth with --config config.yaml")


def evaluate_run(args: argparse.Namespace) -> int:
    """Re-evaluate a logged run's best model on the test set against its logged test/acc."""
    from mnist_lab.data import load_mnist
    from mnist_lab.evaluate import evaluate, report

    try:
        model, cfg = model_from_files(*run_files(args.run, args.uri))
    except ModelSourceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    data = load_mnist(cfg.data.root if Path(cfg.data.root).is_dir() else args.data,
                      cfg.data.val_size, cfg.seed, verify=cfg.data.verify)
    result = evaluate(model, data.test_images, data.test_labels, cfg.eval.batch_size,
                      tta=cfg.eval.tta)
    print(report(result, f"run {args.run}"))
    logged = client_for(args.uri).get_run(args.run).data.metrics.get("test/acc")
    if logged is None:
        print("the run logged no test/acc to compare with")
        return 0
    same = abs(logged - result.accuracy) < 1e-12
    print(f"logged test/acc {logged:.4f}, now {result.accuracy:.4f}: "
          f"{'reproduced exactly' if same else 'DIFFERENT'}")
    return 0 if same else 1


def register(args: argparse.Namespace) -> int:
    """Register a sweep's best child (or one run) in the Model Registry under --name."""
    import mlflow
    from mlflow.utils.validation import _validate_model_name

    try:  # before any export: a name the registry refuses
        _validate_model_name(args.name)
    except mlflow.exceptions.MlflowException as err:
        print(f"error: --name {args.name!r}: {err.message}", file=sys.stderr)
        return 2
    client = client_for(args.uri)
    run_id = args.run
    if args.parent:
        best = client.get_run(args.parent).data.tags.get("best_run_id")
        if not best:
            print(f"error: run {args.parent} has no best_run_id tag; is it a finished sweep?",
                  file=sys.stderr)
            return 2
        run_id = best
    try:
        client.get_run(run_id)
    except Exception as err:
        print(f"error: run {run_id} is not in this store ({err})", file=sys.stderr)
        return 2
    try:
        model_id = logged_model_id(client, run_id, args.uri)
    except ModelSourceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the export itself (MLflow, torch): the run stays as it was
        print(f"error: exporting run {run_id}'s model failed ({type(err).__name__}: {err}); "
              "predict --run and evaluate --run work without it", file=sys.stderr)
        return 1
    try:
        client.create_registered_model(args.name)
    except mlflow.exceptions.MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # the logged model itself (models:/m-...), linked to its run; MLflow 3 has no runs:/ID/model
    version = client.create_model_version(args.name, f"models:/{model_id}", run_id=run_id,
                                          model_id=model_id)
    print(f"registered run {run_id} as models:/{args.name}/{version.version}")
    return 0


def serve(args: argparse.Namespace) -> int:
    """`mlflow models serve` for this store, without an activated venv: MLflow starts
    `uvicorn` from PATH, so the PATH of the server gets this Python's scripts folder first."""
    from mnist_lab.store import resolve_uri

    import socket

    import mlflow

    uri = resolve_uri(OmegaConf.create({"uri": args.uri}))
    client_for(args.uri)  # a store that is there, or one line
    try:  # a model that is there, before the server starts on it
        mlflow.models.get_model_info(args.model)
    except Exception as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: --model {args.model}: no such model in {uri} ({text[:300]})",
              file=sys.stderr)
        return 2
    with socket.socket() as probe:
        try:
            probe.bind((args.host, args.port))
        except OSError as err:
            print(f"error: --port {args.port} on {args.host}: {err.strerror}; pass another "
                  "--port", file=sys.stderr)
            return 2
    scripts = sysconfig.get_path("scripts")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")])}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", args.model,
               "--env-manager", "local", "--host", args.host, "--port", str(args.port)]
    print(f"serving {args.model} at http://{args.host}:{args.port}/invocations (Ctrl-C stops)",
          flush=True)
    os.execve(sys.executable, command, env)  # the server takes this process: signals reach it


def add_parsers(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="re-evaluate a logged run's best model",
        description="Rebuild a run's model from its config.yaml and best.pth, evaluate it on the "
                    "test set and check the result against the test/acc it logged.")
    evaluate.add_argument("--run", required=True, metavar="RUN_ID")
    evaluate.add_argument("--data", default=None, help="data root if the run's is not here")
    evaluate.add_argument("--uri", default=None, help="tracking URI (default as run.py)")
    evaluate.set_defaults(handler=evaluate_run)

    reg = commands.add_parser(
        "register", help="register a sweep's best model in the registry",
        description="Register the MLflow model a run logged (or a sweep's best child's) in the "
                    "Model Registry, as models:/NAME/VERSION for predict --model and serve.")
    source = reg.add_mutually_exclusive_group(required=True)
    source.add_argument("--parent", metavar="RUN_ID", help="a sweep's parent run: its best child")
    source.add_argument("--run", metavar="RUN_ID", help="one training run")
    reg.add_argument("--name", required=True, help="registered model name")
    reg.add_argument("--uri", default=None, help="tracking URI (default as run.py)")
    reg.set_defaults(handler=register)

    srv = commands.add_parser(
        "serve", help="serve a registered model over HTTP (POST /invocations)",
        description="Serve a model with `mlflow models serve` in this environment; POST "
                    '{"inputs": ["<an image file, base64>", ...]} to /invocations: each '
                    'is read as predict reads it, and answered as predict --json answers.')
    srv.add_argument("--model", required=True, metavar="models:/NAME/VERSION",
                     help="a registered model (or runs:/RUN_ID/model)")
    srv.add_argument("--port", type=int, default=5001)
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--uri", default=None, help="tracking URI (default as run.py)")
    srv.set_defaults(handler=serve)
