"""The `mnist-lab` console script: its subcommands, and the one line a refused command prints.

run.py's body is `policy.run_job`; these commands read (and `rerun` repeats) what it logged.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mnist_lab.errors import LabError


def rerun(args: argparse.Namespace) -> int:
    """Repeat a logged run from the resolved config.yaml it recorded, as a new MLflow run whose
    files go where run.py's would (not into the folder the recorded `output_dir` names)."""
    from mnist_lab.job import run
    from mnist_lab.preflight import compose_job
    from mnist_lab.schema import load_logged_config
    from mnist_lab.store import client_for

    client = client_for(args.uri)
    try:
        original = client.get_run(args.run_id)
        path = client.download_artifacts(args.run_id, "config.yaml")
    except Exception as err:
        print(f"error: run {args.run_id} or its config.yaml is not in the store ({err})",
              file=sys.stderr)
        return 2
    cfg = load_logged_config(path)
    cfg.resume = False
    cfg.output_dir = compose_job([]).output_dir  # a new outputs/DATE/TIME, as run.py would make
    if args.uri:
        cfg.tracking.uri = args.uri
    print(f"repeating {original.info.run_name} ({args.run_id}) from its recorded config")
    try:
        run(cfg)
    except Exception as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


USAGE = """Work with the runs that `python run.py` trained and logged to MLflow.

Train with run.py (python run.py --help); then compare the runs, re-evaluate, register and serve
their models, classify your own digit images, or repeat a run. `mnist-lab COMMAND --help` says more.
"""


def main(argv: list[str] | None = None) -> int:
    # MLflow's per-file download bars would come before every answer; MLFLOW_... =true shows them
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = argparse.ArgumentParser(prog="mnist-lab", description=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    from mnist_lab import compare, liveness, predict, registry

    compare.add_parser(commands)
    liveness.add_parser(commands)
    predict.add_parser(commands)
    registry.add_parsers(commands)
    again = commands.add_parser("rerun", help="repeat a logged run from its recorded config",
                                description="Train again from the resolved config.yaml a run "
                                            "logged, as a new MLflow run (same seed: same "
                                            "metrics), its files in a new outputs/DATE/TIME "
                                            "here, as run.py's.")
    again.add_argument("run_id")
    again.add_argument("--uri", default=None, help="tracking URI (default as run.py)")
    again.add_argument("--experiment", default="mnist-lab")
    again.set_defaults(handler=rerun)
    view = commands.add_parser("ui", help="the MLflow UI on this store, once it answers",
                               description=ui.__doc__)
    view.add_argument("--uri", default=None, help="tracking URI (default as run.py)")
    view.add_argument("--experiment", default="mnist-lab")
    view.add_argument("--host", default="127.0.0.1")
    view.add_argument("--port", type=int, default=5000)
    view.set_defaults(handler=ui)
    board = commands.add_parser("dashboard", help="optuna-dashboard on the Optuna sweeps' studies")
    board.add_argument("--storage", default=None,
                       help="study database URL (default: optuna.db beside the MLflow store)")
    board.add_argument("--uri", default=None, help="tracking URI whose folder holds optuna.db")
    board.add_argument("--host", default="127.0.0.1")
    board.add_argument("--port", type=int, default=8080)
    board.set_defaults(handler=dashboard)
    bench = commands.add_parser("bench", help="benchmarks/bench.py: speed figures (--quick, --out)",
                                add_help=False)
    bench.set_defaults(handler=run_bench)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.options = extra  # bench parses its own options
    try:
        return args.handler(args)
    except LabError as err:  # a store that isn't there, a value out of range: one line
        print(f"error: {err}", file=sys.stderr)
        return 2


def ui(args: argparse.Namespace) -> int:
    """`mlflow ui` on this store, its address printed once it answers; the port is kept beside a
    local store, so the links that runs print lead to it."""
    import subprocess
    import time

    import requests
    from omegaconf import OmegaConf

    from mnist_lab.store import client_for, resolve_uri, runs_table, ui_port_file

    uri = resolve_uri(OmegaConf.create({"uri": args.uri}))
    client = client_for(uri)  # a store that is not there: one line, before the server starts
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--registry-store-uri", uri, "--host",
               args.host, "--port", str(args.port), "--workers", "1"]
    kept = ui_port_file(uri)
    if kept is not None:  # artifacts beside the database, as runs log them
        command += ["--default-artifact-root", str(kept.with_name("artifacts"))]
    # a local UI needs no job runner: it only delays the start
    server = subprocess.Popen(command, env={**os.environ,
                                            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    address = f"http://{args.host}:{args.port}"
    try:
        while server.poll() is None:
            try:
                requests.get(f"{address}/health", timeout=2).raise_for_status()
                break
            except requests.RequestException:
                time.sleep(0.5)
        else:
            print(f"error: mlflow ui stopped with status {server.returncode} (is port "
                  f"{args.port} taken? pass another: make ui PORT=5001)", file=sys.stderr)
            return 2
        if kept is not None:
            kept.write_text(str(args.port))
        experiment = client.get_experiment_by_name(args.experiment)
        page = f"#/{runs_table(experiment.experiment_id)}" if experiment else ""
        print(f"MLflow UI, training runs: {address}/{page}  (Ctrl-C stops it)", flush=True)
        return server.wait()
    except KeyboardInterrupt:
        server.terminate()
        server.wait()
        return 0


def dashboard(args: argparse.Namespace) -> int:
    """Serve optuna-dashboard on the storage hydra/sweeper=optuna uses with the same settings."""
    from omegaconf import OmegaConf
    from optuna_dashboard import run_server

    from hydra_plugins.mnist_lab_optuna_sweeper.storages import shown
    from mnist_lab.study import storage_url

    from hydra_plugins.mnist_lab_optuna_sweeper.storages import problem_with

    if args.storage:
        url, problem = args.storage, problem_with(args.storage)
    else:  # the default, beside the MLflow store: read, never made here
        url = storage_url(OmegaConf.create({"storage": None}),
                          OmegaConf.create({"uri": args.uri}), make=False)
        path = Path(url[len("sqlite:///"):])
        problem = None if path.is_file() else f"{path} does not exist: no Optuna sweep ran here"
    if problem:
        print(f"error: study storage {shown(url)}: {problem}", file=sys.stderr)
        return 2
    print(f"studies in {shown(url)}: http://{args.host}:{args.port}/", flush=True)
    run_server(url, host=args.host, port=args.port)
    return 0


def run_bench(args: argparse.Namespace) -> int:
    import runpy

    from mnist_lab.schema import PROJECT_ROOT

    script = runpy.run_path(str(PROJECT_ROOT / "benchmarks" / "bench.py"))
    return script["main"](args.options, prog="mnist-lab bench")


if __name__ == "__main__":
    sys.exit(main())
