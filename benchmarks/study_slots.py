"""How busy the cores are in a pruned Optuna study with n_jobs=2: Hydra's batches (a batch's
slot waits for its slowest trial) against lanes (a slot takes the next trial once its trial ends
or is pruned). `python benchmarks/study_slots.py [--trials 8 --epochs 4 --limit 4000]`

Each mode runs the same study (experiment=optuna_cnn, TPE seed 0, successive halving) on the
bundled data into a store of its own, in turn; the figures are the wall time, the CPU time of
all its processes, the share of the two cores that was busy (CPU / (wall x 2)), and the epochs
trained per minute. Written to benchmarks/results/study_slots.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {"batches (refill=false)": "false", "lanes (refill=true)": "true"}


def run_study(refill: str, folder: Path, args) -> dict:
    import optuna

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "run.py"), "experiment=optuna_cnn",
                    "launcher=parallel", "launcher.n_jobs=2", "hydra.sweeper.n_jobs=2",
                    f"hydra.sweeper.n_trials={args.trials}", f"train.epochs={args.epochs}",
                    f"data.limit={args.limit}", "plots=false", "train.progress=off",
                    f"hydra.sweeper.refill={refill}", f"tracking.uri=sqlite:///{folder}/mlflow.db",
                    f"hydra.sweep.dir={folder}/sweep", f"checkpoint.dir={folder}/ck"],
                   check=True, capture_output=True, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    study = optuna.load_study(study_name="optuna_cnn", storage=f"sqlite:///{folder}/optuna.db")
    epochs = sum(len(t.intermediate_values) for t in study.trials)
    states = [t.state.name for t in study.trials]
    return {"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
            "cores_busy": round(cpu / (wall * 2), 3), "epochs": epochs,
            "epochs_per_minute": round(60 * epochs / wall, 2),
            "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--limit", type=int, default=4000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    figures = {"machine": f"{platform.processor() or platform.machine()}, "
                          f"{__import__('os').cpu_count()} cores",
               "settings": vars(args), "modes": {}}
    for name, refill in MODES.items():
        with tempfile.TemporaryDirectory() as folder:
            figures["modes"][name] = run_study(refill, Path(folder), args)
            print(name, figures["modes"][name], flush=True)
    lines = ["| mode | wall | CPU | cores busy | epochs | epochs/min | complete / pruned |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, f in figures["modes"].items():
        lines.append(f"| {name} | {f['wall_seconds']} s | {f['cpu_seconds']} s | "
                     f"{100 * f['cores_busy']:.0f}% | {f['epochs']} | {f['epochs_per_minute']} | "
                     f"{f['complete']} / {f['pruned']} |")
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study_slots.json").write_text(json.dumps(figures, indent=2) + "\n")
    (out / "study_slots.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
