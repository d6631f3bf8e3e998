"""Entry points: `run_job` behind run.py, and the `mnist-lab` console script's subcommands."""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import sys
from contextlib import contextmanager, redirect_stdout, suppress
from pathlib import Path

from omegaconf import DictConfig

from mnist_lab.errors import DivergedError, LabError, TrackingError, TrialPruned
from mnist_lab.limits import validate

WORST_OBJECTIVE = math.inf  # what a sweeper sees for a failed job (the objective is minimised)


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_job(cfg: DictConfig) -> float:
    """run.py's body: `job.run`, with its failures turned into what the user sees. Known input
    errors end a single run with one line and exit status 2; in a sweep, a failed job is
    recorded FAILED, reported and scored as the worst objective so the others go on. A stop
    signal ends a single run, or a whole sweep, with 130 or 143."""
    from mnist_lab import stopping

    if is_multirun():
        stopping.guard_worker()  # a worker process between jobs, too, stops quietly
    try:
        validate(cfg)  # before torch and MLflow are even imported: a typo answers at once
        from mnist_lab.job import run

        with output_in_run_log():
            return run(cfg)
    except TrialPruned as pruned:  # the Optuna sweeper reads it from the job's return
        print(f"Optuna trial {pruned}", file=sys.stderr)
        raise
    except KeyboardInterrupt:
        if is_multirun():
            stopping.stop_sweep()  # the launcher says how to continue, once
        print(f"\ninterrupted: {resume_hint(cfg)}", file=sys.stderr)
        sys.exit(stopping.exit_status())
    except LabError as err:
        if is_multirun():
            print(f"job failed: {err}", file=sys.stderr)
            if not isinstance(err, TrackingError):
                from mnist_lab.tracking import record_failed_job

                record_failed_job(cfg, err)
            return WORST_OBJECTIVE
        discard_refused_run_folder()
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except DivergedError as err:  # the FAILED run keeps the traceback; the user needs one line
        if is_multirun():
            print(f"job failed: {err}", file=sys.stderr)
            return WORST_OBJECTIVE
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except Exception as err:
        if not is_multirun():
            raise
        print(f"job failed: {err.__class__.__name__}: {err}", file=sys.stderr)
        from mnist_lab.tracking import record_failed_job

        record_failed_job(cfg, err)  # unless its run recorded it already
        return WORST_OBJECTIVE


class CopyTo:
    """A text stream that also appends what it is given to a file."""

    def __init__(self, stream, file):
        self.stream, self.file = stream, file

    def write(self, text: str) -> int:
        self.file.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.file.flush()
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextmanager
def output_in_run_log():
    """What a run prints also goes to its Hydra run.log (beside Hydra's own log records)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        yield
        return
    hydra = HydraConfig.get()
    path = Path(hydra.runtime.output_dir) / f"{hydra.job.name}.log"
    with open(path, "a") as log, redirect_stdout(CopyTo(sys.stdout, log)):
        yield


def discard_refused_run_folder() -> None:
    """Hydra makes a run's outputs/DATE/TIME folder before the config is checked; a refused
    run removes it again, when nothing but Hydra's .hydra/ and run.log is in it."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    out = Path(HydraConfig.get().runtime.output_dir)
    if out.is_dir() and out != Path.cwd() and {p.name for p in out.iterdir()} <= {
            ".hydra", f"{HydraConfig.get().job.name}.log"}:
        shutil.rmtree(out)
        if out.parent.parent.name == "outputs":  # the day's folder, if this was its only run
            with suppress(OSError):
                out.parent.rmdir()


def resume_hint(cfg: DictConfig) -> str:
    from mnist_lab.tracking import hydra_context

    if not cfg.checkpoint.enabled:
        return "checkpoint.enabled=false, so there is nothing to resume"
    return f"the last complete epoch is kept; continue with\n  {resume_command(hydra_context()[0])}"


def resume_command(overrides: list[str], sweep: bool = False) -> str:
    """The command that continues a stopped run (or sweep) given these overrides, `resume=true`
    in place of any `resume=`, quoted for the shell: a value with a space survives the paste."""
    kept = [o for o in overrides if o.partition("=")[0].lstrip("+~") != "resume"]
    return shlex.join(["python", "run.py", *(["-m"] if sweep else []), *kept, "resume=true"])


def rerun(args: argparse.Namespace) -> int:
    """Repeat a logged run from the resolved config.yaml it recorded, as a new MLflow run whose
    files go where run.py's would (not into the folder the recorded `output_dir` names)."""
    from mnist_lab.job import run
    from mnist_lab.preflight import compose_job
    from mnist_lab.store import client_for
    from mnist_lab.tracking import load_logged_config

    client = client_for(args.uri, args.experiment)
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
    return args.handler(args)


def dashboard(args: argparse.Namespace) -> int:
    """Serve optuna-dashboard on the storage hydra/sweeper=optuna uses with the same settings."""
    from omegaconf import OmegaConf
    from optuna_dashboard import run_server

    from mnist_lab.study import shown, storage_url

    url = storage_url(OmegaConf.create({"storage": args.storage}),
                      OmegaConf.create({"uri": args.uri}))
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
