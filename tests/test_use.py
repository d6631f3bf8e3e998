"""Beyond the notebook: cnn_bn, augmentation, TTA, and using trained models (predict, evaluate,
register, serve)."""

import importlib
import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import numpy as np
import pytest
import requests
import torch
from PIL import Image
from torch import nn

from helpers import REAL_DATA, ROOT, compose_config, free_port, tiny_overrides
from mnist_lab import job
from mnist_lab.augment import random_affine, shift, tta_logits
from mnist_lab.cli import main
from mnist_lab.data import load_mnist, to_float
from mnist_lab.evaluate import evaluate
from mnist_lab.images import ImageError, to_mnist


@pytest.mark.slow
def test_cnn_bn_builds_from_yaml_with_batch_norm_and_trains(tiny_data, tmp_path):
    cfg = compose_config([*tiny_overrides(tiny_data), "model=cnn_bn", "train.epochs=3",
                          f"output_dir={tmp_path / 'out'}"])
    model = job.build_model(cfg)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 2
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert job.run(cfg) < 2.3  # below chance-level cross-entropy (ln 10 = 2.30)


def test_pool_first_blocks_compute_the_same_function_with_trained_batch_norm():
    from mnist_lab.models import CNN

    torch.manual_seed(0)
    late = CNN(channels=[8, 16], hidden=[32], batch_norm=True)
    early = CNN(channels=[8, 16], hidden=[32], batch_norm=True, pool_first=True)
    kinds = [type(m).__name__ for m in early][:4]
    assert kinds == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"]
    # BN as training leaves it: running statistics far from (0, 1) and a positive scale
    # with a shift, so the test fails if BN's affine map does not commute with max-pooling
    for bn in (m for m in late if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-2, 2)
        bn.running_var.uniform_(0.2, 3)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    late.eval()
    early.eval()
    # the same weights: only the BN modules' positions (and so their keys) differ
    for a, b in zip([m for m in late if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))],
                    [m for m in early if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]):
        b.load_state_dict(a.state_dict())
    x = torch.rand(5, 1, 28, 28)
    assert torch.allclose(late(x), early(x), atol=1e-5)
    # a negative BN scale does not commute with max-pool: the two orders then differ
    for model in (late, early):
        next(m for m in model if isinstance(m, nn.BatchNorm2d)).weight.data.mul_(-1)
    assert not torch.allclose(late(x), early(x), atol=1e-3)


def test_pool_first_without_batch_norm_is_the_notebook_cnn_exactly():
    from mnist_lab.models import CNN

    torch.manual_seed(0)
    notebook, lab = CNN(dropout=0.0), CNN(dropout=0.0, pool_first=True)
    lab.load_state_dict(notebook.state_dict())  # the same keys: ReLU and pooling hold no weights
    x = torch.rand(6, 1, 28, 28)
    for model in (notebook, lab):
        model(x).square().sum().backward()
    assert torch.allclose(notebook(x), lab(x), atol=1e-6)
    for a, b in zip(notebook.parameters(), lab.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5)
    assert compose_config(["model=cnn"]).model.pool_first  # what run.py model=cnn builds


def test_augmentation_keeps_shape_range_and_identity_at_zero():
    x = to_float(load_mnist(REAL_DATA, 12000, 0).test_images[:64])
    same = random_affine(x, 0.0, 0.0, torch.Generator().manual_seed(0))
    assert torch.allclose(same, x, atol=1e-5)
    moved = random_affine(x, 15.0, 3.0, torch.Generator().manual_seed(0))
    assert moved.shape == x.shape and moved.min() >= 0 and moved.max() <= 1
    differs = (moved - x).abs().flatten(1).amax(dim=1) > 0.1
    assert differs.float().mean() > 0.9  # each image gets its own transform
    again = random_affine(x, 15.0, 3.0, torch.Generator().manual_seed(0))
    assert torch.equal(moved, again)
    assert torch.equal(shift(x, 1, 0)[..., 1:], x[..., :-1])


def test_augmented_training_keeps_labels_and_learns(tiny_data, tmp_path):
    cfg = compose_config([*tiny_overrides(tiny_data), "data.augment=true", "train.epochs=3",
                          "train.label_smoothing=0.1", "eval.tta=true", "model=cnn",
                          f"output_dir={tmp_path / 'out'}"])
    assert job.run(cfg) < 2.3
    report = (tmp_path / "out" / "report.txt").read_text()
    assert float(report.split("overall:")[1].split("%")[0]) > 50


def test_tta_averages_shifted_predictions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    x = torch.rand(4, 1, 28, 28)
    logits = tta_logits(model, x)
    # by hand: the mean softmax over the image and its four one-pixel shifts
    views = [x, shift(x, 1, 0), shift(x, -1, 0), shift(x, 0, 1), shift(x, 0, -1)]
    expected = torch.stack([model(v).softmax(dim=1) for v in views]).mean(dim=0).log()
    assert torch.allclose(logits, expected, atol=1e-6)
    assert not torch.allclose(logits, model(x).log_softmax(dim=1), atol=1e-3)  # shifts matter
    result = evaluate(model, (x[:, 0] * 255).to(torch.uint8), torch.arange(4), tta=True)
    plain = evaluate(model, (x[:, 0] * 255).to(torch.uint8), torch.arange(4))
    assert result.confusion.sum() == 4 and result.loss != plain.loss


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A quickly trained FFNN on real MNIST (10,000 images, 1 epoch), logged to its own store."""
    tmp = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{tmp}/store/mlflow.db"
    cfg = compose_config(["model=ffnn", "train.epochs=1", "data.limit=10000", "train.batch_size=64",
                          "tracking=local", f"tracking.uri={uri}", "train.progress=off",
                          "tracking.log_model=false", f"checkpoint.dir={tmp}/ckpt",
                          f"output_dir={tmp}/out"])
    job.run(cfg)
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("mnist-lab").experiment_id])
    return uri, run, tmp


def render(digit: torch.Tensor, path, dark_on_light: bool, scale: int = 5, offset=(17, 9),
           mode: str = "RGB"):
    """A test digit drawn larger and off-centre on a bigger canvas, either polarity."""
    big = np.asarray(Image.fromarray(digit.numpy()).resize((28 * scale, 28 * scale),
                                                           Image.Resampling.BILINEAR))
    canvas = np.zeros((28 * scale + 40, 28 * scale + 30), dtype=np.uint8)
    canvas[offset[0]:offset[0] + big.shape[0], offset[1]:offset[1] + big.shape[1]] = big
    if dark_on_light:
        canvas = 255 - canvas
    Image.fromarray(canvas).convert(mode).save(path)


def test_predict_classifies_digits_in_both_polarities(trained_run, tmp_path, capsys):
    uri, run, _ = trained_run
    data = load_mnist(REAL_DATA, 12000, 0)
    files, labels = [], []
    for i in range(12):
        for dark in (False, True):
            path = tmp_path / f"digit{i}-{'dark' if dark else 'light'}.png"
            render(data.test_images[i], path, dark)
            files.append(str(path))
            labels.append(int(data.test_labels[i]))
    assert main(["predict", *files, "--run", run.info.run_id, "--uri", uri, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    predicted = [r["prediction"] for r in results]
    right = sum(p == t for p, t in zip(predicted, labels))
    assert right >= 22, list(zip(predicted, labels))  # a 1-epoch FFNN, 24 drawings
    assert all(len(r["top3"]) == 3 and r["top3"][0]["probability"] >= r["top3"][1]["probability"]
               for r in results)
    # polarity does not change the answer
    assert predicted[0::2] == predicted[1::2]


def test_predict_from_a_checkpoint_or_the_registry_agrees_with_the_run(trained_run, tmp_path,
                                                                       capsys):
    uri, run, folder = trained_run
    image = tmp_path / "two.png"
    render(load_mnist(REAL_DATA, 12000, 0).test_images[1], image, dark_on_light=False)
    answers = []
    for source in (["--run", run.info.run_id],
                   ["--checkpoint", str(folder / "out" / "best.pth"),
                    "--config", str(folder / "out" / "config.yaml")]):
        assert main(["predict", str(image), *source, "--uri", uri, "--json"]) == 0
        answers.append(json.loads(capsys.readouterr().out)[0]["top3"])
    assert main(["register", "--run", run.info.run_id, "--name", "mnist-predict", "--uri", uri]) == 0
    capsys.readouterr()
    assert main(["predict", str(image), "--model", "models:/mnist-predict/1", "--uri", uri,
                 "--json"]) == 0
    answers.append(json.loads(capsys.readouterr().out)[0]["top3"])
    assert answers[0] == answers[1]  # the same state_dict, the same probabilities
    assert answers[2][0]["digit"] == answers[0][0]["digit"]
    assert answers[2][0]["probability"] == pytest.approx(answers[0][0]["probability"], abs=1e-4)
    assert main(["predict", str(image), "--checkpoint", "best.pth"]) == 2  # no --config


def test_predict_reports_bad_files_and_still_classifies_the_rest(trained_run, tmp_path, capsys):
    uri, run, _ = trained_run
    good = tmp_path / "seven.png"
    render(load_mnist(REAL_DATA, 12000, 0).test_images[0], good, dark_on_light=True)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    blank = tmp_path / "blank.png"
    Image.new("L", (40, 40), 255).save(blank)
    code = main(["predict", str(text), str(good), str(blank), "--run", run.info.run_id,
                 "--uri", uri])
    out, err = capsys.readouterr()
    assert code == 1
    assert f"{text}: not a readable image" in err and f"{blank}: no digit found" in err
    assert out.startswith(f"{good}: 7")
    with pytest.raises(ImageError):
        to_mnist(text)


def test_to_mnist_matches_the_dataset_form():
    data = load_mnist(REAL_DATA, 12000, 0)
    digit = data.test_images[3]
    prepared = to_mnist_from_array(digit.numpy())
    original = digit.float() / 255
    assert prepared.shape == (28, 28)
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    mass = prepared.sum()
    assert abs((ys * prepared).sum() / mass - 14) < 1 and abs((xs * prepared).sum() / mass - 14) < 1
    assert torch.corrcoef(torch.stack([prepared.flatten(), original.flatten()]))[0, 1] > 0.8


def to_mnist_from_array(array):
    import io

    png = io.BytesIO()
    Image.fromarray(array).save(png, "PNG")
    return to_mnist(png.getvalue())


def test_evaluate_reproduces_the_logged_accuracy(trained_run, capsys):
    uri, run, _ = trained_run
    assert main(["evaluate", "--run", run.info.run_id, "--uri", uri]) == 0
    out, err = capsys.readouterr()
    assert "reproduced exactly" in out
    assert "Downloading artifacts" not in err  # MLflow's progress bars stay quiet


@pytest.mark.slow
def test_a_failed_export_on_register_leaves_the_run_as_it_was(tiny_data, tmp_path, monkeypatch,
                                                             capsys):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    job.run(compose_config([*tiny_overrides(tiny_data), "tracking=local", f"tracking.uri={uri}",
                            "plots=false", "tracking.log_model=false",
                            f"output_dir={tmp_path / 'out'}"]))
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("mnist-lab").experiment_id])
    capsys.readouterr()  # the run's own output

    def full_disk(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(importlib.import_module("mlflow.pyfunc"), "log_model", full_disk)
    assert main(["register", "--run", run.info.run_id, "--name", "m", "--uri", uri]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exporting run" in err and "No space left" in err
    after = client.get_run(run.info.run_id)  # not FAILED by the export's start_run
    assert (after.info.status, after.info.end_time) == ("FINISHED", run.info.end_time)
    assert not after.outputs.model_outputs


def test_register_then_load_by_name(trained_run):
    uri, run, _ = trained_run
    assert not run.outputs.model_outputs  # tracking.log_model=false: no export at the run's end
    assert main(["register", "--run", run.info.run_id, "--name", "mnist-test", "--uri", uri]) == 0
    after = mlflow.MlflowClient(uri).get_run(run.info.run_id)  # the export, made on demand
    assert after.outputs.model_outputs
    assert (after.info.status, after.info.end_time) == (run.info.status, run.info.end_time)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/mnist-test/latest").unwrap_python_model().net
    assert type(model).__name__ == "FFNN" and not model.training  # the lab's own class
    x = torch.rand(5, 1, 28, 28)
    local = job.build_model(compose_config(["model=ffnn"]))
    state = mlflow.MlflowClient(uri).download_artifacts(run.info.run_id, "best.pth")
    local.load_state_dict(torch.load(state, weights_only=True))
    local.eval()
    with torch.inference_mode():
        assert torch.allclose(model(x), local(x), atol=1e-5)


@pytest.mark.slow
def test_the_served_model_reads_image_files_as_predict_does(trained_run, tmp_path, capsys):
    """Served without an activated venv; images as users have them: large, off-centre, dark on
    light in colour or light on dark in grayscale, sent as base64 file bytes (a data URL too)."""
    import base64

    uri, run, _ = trained_run
    assert main(["register", "--run", run.info.run_id, "--name", "mnist-serve", "--uri", uri]) == 0
    out, err = capsys.readouterr()
    assert out == f"registered run {run.info.run_id} as models:/mnist-serve/1\n"
    assert "no artifacts" not in err and "Successfully" not in err  # quiet: one line, ours
    test_images = load_mnist(REAL_DATA, 12000, 0).test_images
    files = [tmp_path / f"digit{i}.png" for i in range(4)]
    for i, path in enumerate(files):
        render(test_images[i], path, dark_on_light=i % 2 == 0, scale=7,
               mode="RGB" if i % 2 == 0 else "L")
    files.append(ROOT / "examples" / "digits" / "seven.png")  # the README's curl example
    assert main(["predict", *map(str, files), "--run", run.info.run_id, "--uri", uri,
                 "--json"]) == 0
    expected = [{k: v for k, v in answer.items() if k != "file"}
                for answer in json.loads(capsys.readouterr().out)]
    encoded = [base64.b64encode(path.read_bytes()).decode() for path in files]
    encoded[1] = "data:image/png;base64," + encoded[1]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = "/usr/bin:/bin"  # a shell without the venv activated: no uvicorn on PATH
    server = subprocess.Popen([sys.executable, "-m", "mnist_lab.cli", "serve", "--model",
                               "models:/mnist-serve/1", "--port", str(port), "--uri", uri],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while server.poll() is None and time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/ping", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        assert server.poll() is None, server.stdout.read()
        reply = requests.post(f"{url}/invocations", json={"inputs": [*encoded, "not base64!"]},
                              timeout=60)
        assert reply.ok, reply.text
        served = reply.json()["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert [{k: v for k, v in answer.items() if k != "error"} for answer in served[:5]] == expected
    assert all(answer["error"] is None for answer in served[:5])
    assert served[5] == {"prediction": None, "top3": None,
                         "error": "image 5: not base64 (send the file's bytes, base64-encoded)"}
    assert [answer["prediction"] for answer in served[:4]] == [7, 2, 1, 0]  # the test set's first


@pytest.mark.slow
def test_the_ui_answers_when_it_says_so_and_runs_link_to_its_port(tiny_data, tmp_path):
    from omegaconf import OmegaConf

    from mnist_lab import store as store_module

    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    store_module.connect(OmegaConf.create({"uri": uri, "experiment": "mnist-lab"}))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mnist_lab.cli", "ui", "--uri", uri,
                               "--port", str(port)], stdout=subprocess.PIPE, text=True,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        line = next(line for line in server.stdout if line.startswith("MLflow UI"))
        assert line.startswith(f"MLflow UI, training runs: http://127.0.0.1:{port}/#/experiments/"
                               "1/runs?viewStateShareKey=lab ")
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        # the view that address names, as the UI reads it: columns that answer "which is best"
        tags = requests.get(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get",
                            params={"experiment_id": "1"}, timeout=5).json()["experiment"]["tags"]
        view = json.loads({t["key"]: t["value"] for t in tags}["mlflow.sharedViewState.lab"])
        assert view["selectedColumns"][:2] == ["params.`model.name`", "params.`optim.lr`"]
        page = store_module.ui_url(OmegaConf.create({"uri": uri}), "experiments/1")
        assert page.startswith(f"http://127.0.0.1:{port}/#/experiments/1")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def test_read_only_commands_refuse_bad_input_in_one_line_and_create_nothing(trained_run, tmp_path,
                                                                            capsys):
    import socket

    uri, run, _ = trained_run
    checks = [
        (["serve", "--model", "models:/nosuch/1", "--uri", uri],
         "error: --model models:/nosuch/1: no such model in"),
        (["register", "--run", run.info.run_id, "--name", "a/b", "--uri", uri],
         "error: --name 'a/b': Invalid model name 'a/b'. Names cannot contain '/' or ':'."),
        (["compare", "--output", str(tmp_path / "a-file"), "--uri", uri],
         f"error: --output {tmp_path / 'a-file'}: a file, not a folder"),
        (["dashboard", "--uri", f"sqlite:///{tmp_path}/none/mlflow.db"],
         f"error: study storage sqlite:///{tmp_path}/none/optuna.db: {tmp_path}/none/optuna.db "
         "does not exist: no Optuna sweep ran here"),
        (["dashboard", "--storage", "postgresql://nobody@127.0.0.1:1/db"],
         "error: study storage postgresql://nobody@127.0.0.1:1/db: the database does not answer"),
    ]
    (tmp_path / "a-file").write_text("")
    assert main(["register", "--run", run.info.run_id, "--name", "mnist-port", "--uri", uri]) == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        checks.append((["serve", "--model", "models:/mnist-port/1", "--port", str(port), "--uri",
                        uri], f"error: --port {port} on 127.0.0.1: Address already in use"))
        capsys.readouterr()
        for argv, says in checks:
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.startswith(says) and err.count("\n") == 1, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no store, no folder
    assert not mlflow.MlflowClient(uri).search_registered_models(filter_string="name = 'a/b'")
