"""The fault suite: bad input refused before any work, interrupted runs resumed, nothing lost."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from mlflow import MlflowClient

from helpers import (ROOT, compose_config, make_dataset, runs_in, store, synthetic_digits,
                      tiny_overrides, tracked, write_idx)
from mnist_lab import checkpoint, data, job
from mnist_lab.checkpoint import CheckpointError, load_safely
from mnist_lab.data import DataError
from mnist_lab.errors import ConfigError


BAD_VALUES = ["optim.lr=0", "optim.lr=-1", "dropout.p=1", "dropout.p=-0.5", "train.batch_size=0",
              "train.batch_size=501", "train.epochs=0", "data.val_size=0", "data.val_size=600",
              "data.limit=0"]


@pytest.mark.parametrize("override", BAD_VALUES)
def test_bad_values_are_refused_before_data_or_mlflow(tiny_data, tmp_path, override, monkeypatch):
    loads = []
    monkeypatch.setattr(job, "load_mnist", lambda *a, **k: loads.append(a))
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        job.run(compose_config(tracked(tiny_data, tmp_path, override)))
    assert loads == [] and not (tmp_path / "store").exists()


def break_magic(root):
    path = root / "train-labels-idx1-ubyte.gz"
    raw = bytearray(data.gzip.decompress(path.read_bytes()))
    raw[2:4] = b"\x09\x99"
    path.write_bytes(data.gzip.compress(bytes(raw)))


def mismatch_counts(root):
    images, _ = synthetic_digits(590, 0)
    write_idx(root / "train-images-idx3-ubyte", images)


DATA_FAULTS = {
    "missing file": (lambda root: (root / "t10k-labels-idx1-ubyte.gz").unlink(), "not found"),
    "truncated gzip": (lambda root: (root / "train-images-idx3-ubyte.gz").write_bytes(
        (root / "train-images-idx3-ubyte.gz").read_bytes()[:500]), "truncated or corrupt"),
    "wrong magic": (break_magic, "magic number"),
    "mismatched counts": (mismatch_counts, "590 train images but 600 labels"),
}


@pytest.mark.parametrize("fault", DATA_FAULTS)
def test_data_faults_stop_before_training_and_record_no_run(tiny_data, tmp_path, fault):
    damage, message = DATA_FAULTS[fault]
    damage(tiny_data)
    with pytest.raises(DataError, match=message):
        job.run(compose_config(tracked(tiny_data, tmp_path)))
    assert runs_in(store(tmp_path)) == []


def test_checksum_mismatch_is_refused(tiny_data, tmp_path):
    with pytest.raises(DataError, match="SHA-256"):
        job.run(compose_config([*tracked(tiny_data, tmp_path), "data.verify=true"]))
    assert runs_in(store(tmp_path)) == []


def test_a_failed_download_leaves_nothing_behind(tmp_path, monkeypatch):
    import torchvision.datasets

    class BrokenMirror:
        def __init__(self, root, train, download):
            raw = os.path.join(root, "MNIST", "raw")
            os.makedirs(raw, exist_ok=True)
            make_dataset(tmp_path / "fake")  # not the real MNIST: fails verification
            for f in (tmp_path / "fake").iterdir():
                os.replace(f, os.path.join(raw, f.name))

    monkeypatch.setattr(torchvision.datasets, "MNIST", BrokenMirror)
    target = tmp_path / "target"
    with pytest.raises(DataError, match="SHA-256"):
        data.load_mnist(target, 12000, 0, download_missing=True)
    assert list(target.iterdir()) == []


def test_a_download_that_verifies_is_moved_in(tmp_path, monkeypatch):
    import shutil

    import torchvision.datasets

    class Mirror:
        def __init__(self, root, train, download):
            raw = os.path.join(root, "MNIST", "raw")
            os.makedirs(raw, exist_ok=True)
            for f in (ROOT / "data" / "mnist").glob("*.gz"):
                shutil.copy(f, raw)

    monkeypatch.setattr(torchvision.datasets, "MNIST", Mirror)
    loaded = data.load_mnist(tmp_path / "fresh", 12000, 0, download_missing=True)
    assert len(loaded.test_labels) == 10000
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == sorted(
        p.name for p in (ROOT / "data" / "mnist").glob("*.gz"))


def test_crafted_pickle_checkpoint_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_safely(path)


def test_resume_without_a_checkpoint_says_so(tiny_data):
    with pytest.raises(ConfigError, match="resume=true: no checkpoint for this config"):
        job.run(compose_config([*tiny_overrides(tiny_data), "resume=true"]))


def start_lab(args, tmp_path):
    # Ctrl-C as a terminal's foreground job gets it: the tests may run with SIGINT ignored (a
    # background job's), which a child inherits and, rightly, keeps
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_line(process, text, timeout=120):
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if text in line:
            return lines
        if not line and process.poll() is not None:
            break
    raise AssertionError(f"never saw {text!r}: {''.join(lines)}")


def slow_enough(tmp_path):
    """A dataset big enough that an epoch takes a moment, so signals land mid-run."""
    return make_dataset(tmp_path / "bigger", train=4000, test=200)


def interrupt_after_first_epoch(tmp_path, signum):
    """Start a 4-epoch tracked run, send `signum` once epoch 1 is done; (args, stderr, run)."""
    args = [*tiny_overrides(slow_enough(tmp_path)), "tracking=local",
            f"tracking.uri={store(tmp_path)}", "train.epochs=4", "model=cnn",
            f"hydra.run.dir={tmp_path}/o"]
    process = start_lab(args, tmp_path)
    wait_for_line(process, "epoch   1/4")
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum]  # 128 + signum
    (run,) = runs_in(store(tmp_path))
    assert run.info.status == "KILLED"
    return args, err, run


@pytest.mark.slow
def test_sigint_stops_keeps_checkpoint_marks_killed_and_resume_continues(tmp_path):
    args, err, run = interrupt_after_first_epoch(tmp_path, signal.SIGINT)
    assert "resume=true" in err and "python run.py" in err
    saved = load_safely(checkpoint.folder_for(compose_config(args)) / checkpoint.LAST)
    assert saved["epoch"] >= 1 and saved["run_id"] == run.info.run_id

    resumed = subprocess.run([sys.executable, str(ROOT / "run.py"), *args, "resume=true"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    (run,) = runs_in(store(tmp_path))  # the same run continued, no new one
    assert run.info.status == "FINISHED"
    steps = [m.step for m in MlflowClient(store(tmp_path)).get_metric_history(run.info.run_id,
                                                                               "val/loss")]
    assert sorted(steps) == [1, 2, 3, 4]


@pytest.mark.slow
def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    _, err, _ = interrupt_after_first_epoch(tmp_path, signal.SIGTERM)
    assert "resume=true" in err


def run_with_sigint_mid_epoch_1(tiny_data, tmp_path, monkeypatch, sigint_handler):
    """job.run for 3 epochs with SIGINT raised inside a `__del__` during epoch 1 (where Python
    ignores the KeyboardInterrupt it raises); returns the config."""
    class SignalsInItsFinaliser:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)

    build = job.build_model
    calls = []

    def build_with_hook(cfg):
        model = build(cfg)

        def forward_hook(*_):
            calls.append(1)
            if len(calls) == 2:
                SignalsInItsFinaliser()

        model.register_forward_hook(forward_hook)
        return model

    monkeypatch.setattr(job, "build_model", build_with_hook)
    cfg = compose_config([*tracked(tiny_data, tmp_path), "train.epochs=3",
                          f"output_dir={tmp_path / 'out'}"])
    previous = signal.signal(signal.SIGINT, sigint_handler)
    try:
        job.run(cfg)
    finally:
        assert signal.getsignal(signal.SIGINT) is sigint_handler  # the run restored it
        signal.signal(signal.SIGINT, previous)
    return cfg


def test_a_ctrl_c_that_python_swallows_still_stops_the_run_at_the_epoch_end(tiny_data, tmp_path,
                                                                             monkeypatch):
    with pytest.raises(KeyboardInterrupt):
        run_with_sigint_mid_epoch_1(tiny_data, tmp_path, monkeypatch, signal.default_int_handler)
    cfg = compose_config([*tracked(tiny_data, tmp_path), "train.epochs=3"])
    saved = load_safely(checkpoint.folder_for(cfg) / checkpoint.LAST)
    assert saved["epoch"] == 1  # stopped at the first epoch end, not after all three
    (run,) = runs_in(store(tmp_path))
    assert run.info.status == "KILLED"


@pytest.mark.slow
def test_an_ignored_sigint_stays_ignored(tiny_data, tmp_path, monkeypatch):
    cfg = run_with_sigint_mid_epoch_1(tiny_data, tmp_path, monkeypatch, signal.SIG_IGN)
    assert checkpoint.finished_marker(checkpoint.folder_for(cfg))["epoch"] == 3  # all 3 epochs
    (run,) = runs_in(store(tmp_path))
    assert run.info.status == "FINISHED"


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    root = slow_enough(tmp_path)
    common = [*tiny_overrides(root), "train.epochs=3", "model=cnn", "tracking=off"]
    whole = subprocess.run([sys.executable, str(ROOT / "run.py"), *common,
                            f"checkpoint.dir={tmp_path}/ckpt-a", f"hydra.run.dir={tmp_path}/a"],
                           capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr

    killed = [*common, f"checkpoint.dir={tmp_path}/ckpt-b", f"hydra.run.dir={tmp_path}/b"]
    process = start_lab(killed, tmp_path)
    wait_for_line(process, "epoch   1/3")
    time.sleep(0.3)  # into epoch 2
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    saved = load_safely(checkpoint.folder_for(compose_config(killed)) / checkpoint.LAST)
    assert saved["epoch"] in (1, 2)
    leftovers = list((checkpoint.folder_for(compose_config(killed))).glob("*.tmp"))
    resumed = subprocess.run([sys.executable, str(ROOT / "run.py"), *killed, "resume=true"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"after epoch {saved['epoch']}" in resumed.stdout
    report_a = (tmp_path / "a" / "report.txt").read_text()
    report_b = (tmp_path / "b" / "report.txt").read_text()
    assert report_a == report_b  # per-class counts and test loss, digit for digit
    # each finished run's note (in place of its last.ckpt) keeps its per-epoch history
    history_a = checkpoint.finished_marker(checkpoint.folder_for(compose_config(common + [
        f"checkpoint.dir={tmp_path}/ckpt-a"])))["history"]
    history_b = checkpoint.finished_marker(checkpoint.folder_for(compose_config(killed)))["history"]
    for key in ("train/loss", "val/loss", "val/acc"):
        assert history_a[key] == history_b[key], key
    assert len(leftovers) <= 1  # at most the write that the kill interrupted


@pytest.mark.slow
def test_a_diverging_job_in_a_sweep_fails_alone(tiny_data, tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "-m", *tracked(tiny_data, tmp_path),
         "optim=sgd", "optim.lr=0.01,1e12", "dropout=none", f"hydra.sweep.dir={tmp_path}/s"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr  # after its summary: a sweep with failures
    assert "sweep summary: 2 runs: 1 completed, 1 failed" in result.stdout
    assert "job failed" in result.stderr and "training loss became" in result.stderr
    runs = runs_in(store(tmp_path))
    parent = next(r for r in runs if r.data.tags.get("sweep") == "true")
    children = {r.data.params.get("optim.lr"): r for r in runs if r is not parent}
    assert children["0.01"].info.status == "FINISHED"
    assert children["1000000000000.0"].info.status == "FAILED"
    assert parent.data.tags["sweep.failed"] == "1" and parent.data.tags["sweep.runs"] == "2"
    assert parent.data.tags["best_run_id"] == children["0.01"].info.run_id


@pytest.mark.slow
def test_a_bad_value_in_a_sweep_is_recorded_failed_and_the_rest_run(tiny_data, tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "-m", *tracked(tiny_data, tmp_path),
         "dropout.p=0.1,1.5", f"hydra.sweep.dir={tmp_path}/s"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    statuses = sorted(r.info.status for r in runs_in(store(tmp_path))
                      if r.data.tags.get("sweep") != "true")
    assert statuses == ["FAILED", "FINISHED"]


@pytest.mark.slow
def test_rerun_repeats_a_logged_run_exactly_into_a_new_run_folder(tiny_data, tmp_path,
                                                                  monkeypatch):
    from mnist_lab.cli import main

    first_out = tmp_path / "out"
    job.run(compose_config(tracked(tiny_data, tmp_path, "model=cnn", f"output_dir={first_out}")))
    (first,) = runs_in(store(tmp_path))
    written = {p.name: p.stat().st_mtime_ns for p in first_out.iterdir()}
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["rerun", first.info.run_id, "--uri", store(tmp_path)]) == 0
    runs = runs_in(store(tmp_path))
    assert len(runs) == 2
    again = next(r for r in runs if r.info.run_id != first.info.run_id)
    for key in ("test/acc", "test/loss", "best/val_loss"):
        assert again.data.metrics[key] == first.data.metrics[key], key
    # its files go where run.py's would: a new outputs/DATE/TIME, not the recorded output_dir
    (folder,) = (tmp_path / "elsewhere" / "outputs").glob("*/*")
    assert (folder / "report.txt").read_text() == (first_out / "report.txt").read_text()
    assert f"output_dir: {folder}" in (folder / "config.yaml").read_text()
    assert {p.name: p.stat().st_mtime_ns for p in first_out.iterdir()} == written


def test_resume_by_run_id_continues_that_run_and_checks_the_config(tiny_data, tmp_path):
    out = f"output_dir={tmp_path / 'out'}"
    job.run(compose_config(tracked(tiny_data, tmp_path, out)))
    (run,) = runs_in(store(tmp_path))
    job.run(compose_config(tracked(tiny_data, tmp_path, f"resume={run.info.run_id}", out)))
    (again,) = runs_in(store(tmp_path))  # still one run: it was continued, not duplicated
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    steps = [m.step for m in MlflowClient(store(tmp_path)).get_metric_history(run.info.run_id,
                                                                               "val/loss")]
    assert sorted(steps) == [1, 2]
    with pytest.raises(ConfigError, match="made with another config"):
        job.run(compose_config(tracked(tiny_data, tmp_path, f"resume={run.info.run_id}",
                                       "optim.lr=0.01")))
    with pytest.raises(ConfigError, match="no such run"):
        job.run(compose_config(tracked(tiny_data, tmp_path, "resume=0123456789abcdef")))
