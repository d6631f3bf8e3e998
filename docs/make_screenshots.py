"""The README's pictures, made again from a real run: `python docs/make_screenshots.py`.

Runs `experiment=quick` (both models x two learning rates on 6,000 real MNIST images, about a
minute) into a temporary MLflow store, starts `mlflow ui` on it, takes headless Chromium
screenshots of the runs table and the compare page, and copies the best CNN
run's figures; everything lands in docs/images/ as small palette PNGs. Needs Chromium
(`apt-get install chromium`) and Playwright to drive it (`pip install -e '.[docs]'`; it uses
the system's Chromium, downloads no browser). `--store DIR` reuses a store that already holds
such a sweep.
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

from mnist_lab.store import runs_table

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
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


def screenshot(url: str, path: Path, size: str, picks: dict[str, list[str]] = {}) -> None:
    """A headless Chromium screenshot of `url`, driven by Playwright; `picks` first chooses
    values in the page's drop-downs, found by their placeholder text, as a user would:
    "Clear All", then type each name and press Enter."""
    from playwright.sync_api import sync_playwright

    width, height = map(int, size.split(","))
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=shutil.which(browser()),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = chromium.new_page(viewport={"width": width, "height": height})
        page.goto(url)
        page.wait_for_timeout(5000)  # the UI polls: the network never goes idle
        if picks:
            page.get_by_role("button", name="Clear All").click()
        for placeholder, names in picks.items():
            page.locator(".du-bois-light-select-selection-placeholder",
                         has_text=placeholder).click(force=True)
            for name in names:
                page.keyboard.type(name)
                page.wait_for_timeout(300)
                page.keyboard.press("Enter")
            page.keyboard.press("Escape")
        page.wait_for_timeout(1500)
        page.screenshot(path=str(path))
        chromium.close()


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
        # name: (address, window size, drop-down picks, the width of MLflow's assistant panel
        # on the right, cut off: nothing of ours is there)
        pages = {
            # the address `make ui` and the runs print: the lab's view of the runs table
            "mlflow_runs.png": (f"{base}/#/{runs_table(experiment)}", "1800,520", {}, 470),
            # the compare page after the README's two steps (MLflow preselects other keys)
            "mlflow_compare.png": (f"{base}/#/compare-runs?runs={urllib.parse.quote(ids)}"
                                   f"&experiments={urllib.parse.quote(json.dumps([experiment]))}",
                                   "1600,640",
                                   {"Please select parameters": ["model.name", "optim.lr"],
                                    "Please select metrics": ["test/acc"]}, 400),
        }
        IMAGES.mkdir(parents=True, exist_ok=True)
        for name, (url, size, picks, panel) in pages.items():
            raw = work / name
            screenshot(url, raw, size, picks)
            image = Image.open(raw)
            image.crop((0, 0, image.width - panel, image.height)).save(raw)
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
