"""The README's pictures, made again from a real run: `python docs/make_screenshots.py`.

Runs `experiment=quick` (both models x two learning rates on 6,000 real MNIST images, about a
minute) into a temporary MLflow store, starts `mlflow ui` on it, takes headless Chromium
screenshots of the runs table and the compare page, and copies the best CNN
run's figures; everything lands in docs/images/ as small palette PNGs. Needs Chromium
(`apt-get install chromium`). `--store DIR` reuses a store that already holds such a sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import requests
from mlflow import MlflowClient
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
FIGURES = ("loss_curves.png", "confusion_matrix.png", "class_accuracy.png",
           "confident_mistakes.png")


def train(store: Path, overrides: list[str]) -> None:
    subprocess.run([sys.executable, str(ROOT / "run.py"), "experiment=quick",
                    f"tracking.uri=sqlite:///{store}/mlflow.db", f"hydra.sweep.dir={store}/sweep",
                    f"checkpoint.dir={store}/checkpoints", "train.progress=off", *overrides],
                   check=True, cwd=ROOT)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    raise SystemExit("no Chromium on PATH: apt-get install chromium")


def screenshot(url: str, path: Path, size: str = "1400,900") -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                        f"--window-size={size}", "--virtual-time-budget=15000", "--hide-scrollbars",
                        f"--screenshot={path}", url], check=True, capture_output=True, timeout=120)


def shrink(source: Path, target: Path, width: int | None = None) -> None:
    """A 256-colour PNG, optionally scaled to `width`: a tenth of the size, the same look."""
    image = Image.open(source).convert("RGB")
    if width and image.width > width:
        image = image.resize((width, round(image.height * width / image.width)),
                             Image.Resampling.LANCZOS)
    image.quantize(256, dither=Image.Dither.NONE).save(target, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="a store holding an experiment=quick sweep")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for the sweep")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mnist-lab-shots-"))
    store = args.store or work / "store"
    if not args.store:
        train(store, args.overrides)
    uri = f"sqlite:///{store}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mnist-lab").experiment_id
    parent = client.search_runs([experiment], "tags.sweep = 'true'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    children = client.search_runs([experiment],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    port = free_port()
    # no GenAI job runners (seven worker processes) for a UI that only shows training runs
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                               "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/health", timeout=10).ok:
                    break
            except requests.RequestException:
                time.sleep(1)
        ids = json.dumps([c.info.run_id for c in children])
        # A shared view (an experiment tag the UI reads by key): the runs listed flat (sorted
        # by a metric, the UI does not nest children under their parent), with the columns a
        # user adds first.
        view = {"searchFilter": "", "orderByKey": "metrics.`test/acc`", "orderByAsc": False,
                "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [],
                "modelVersionFilter": "All Runs",
                "selectedColumns": ["params.`model.name`", "params.`optim.lr`",
                                    "metrics.`best/epoch`", "metrics.`best/val_loss`",
                                    "metrics.`test/acc`"]}
        client.set_experiment_tag(experiment, "mlflow.sharedViewState.readme", json.dumps(view))
        pages = {  # name: (address, window size, height kept)
            "mlflow_runs.png": (f"{base}/#/experiments/{experiment}/runs?viewStateShareKey=readme",
                                "1600,560", 560),
            "mlflow_compare.png": (f"{base}/#/compare-runs?runs={urllib.parse.quote(ids)}"
                                   f"&experiments={urllib.parse.quote(json.dumps([experiment]))}",
                                   "1600,1000", 880),
        }
        IMAGES.mkdir(parents=True, exist_ok=True)
        for name, (url, size, height) in pages.items():
            raw = work / name
            screenshot(url, raw, size)
            # the right quarter is MLflow's assistant panel, which has nothing of ours
            image = Image.open(raw)
            image.crop((0, 0, int(image.width * 0.74), height)).save(raw)
            shrink(raw, IMAGES / name, width=1000)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the UI and the workers it started
        server.wait(timeout=60)
    cnn = [c for c in children if c.data.params.get("model.name") == "cnn"]
    best = min(cnn, key=lambda c: c.data.metrics["best/val_loss"])
    for name in FIGURES:
        shrink(Path(client.download_artifacts(best.info.run_id, name, str(work))),
               IMAGES / name, width=700)
    shrink(Path(client.download_artifacts(parent.info.run_id, "sweep_val_loss.png", str(work))),
           IMAGES / "sweep_val_loss.png", width=700)
    total = sum(p.stat().st_size for p in IMAGES.glob("*.png")) // 1024
    print(f"wrote {len(pages) + len(FIGURES) + 1} images to {IMAGES} ({total} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
