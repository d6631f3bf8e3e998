"""Every bad input: one line naming the key or file, the value and what is allowed; no work done."""

import os
import struct
import zlib

import pytest
import torch
from mlflow import MlflowClient
from omegaconf import OmegaConf
from PIL import Image

from helpers import compose_config, run_lab, store, tiny_overrides, tracked
from mnist_lab import checkpoint, job
from mnist_lab import store as store_module
from mnist_lab.cli import main
from mnist_lab.errors import (CheckpointError, ConfigError, DataError, DivergedError,
                              TrackingError)
from mnist_lab.preflight import first_problem


# --- values that compose but can't run (validate) ---------------------------------------------
BAD_VALUES = [
    ("optim.lr=nan", "optim.lr", "finite"), ("optim.lr=inf", "optim.lr", "finite"),
    ("optim.lr=1e400", "optim.lr", "finite"),
    ("seed=1180591620717411303424", "seed", "2**63 - 1"),
    ("model.hidden=[0]", "model.hidden", "from 1 to"),
    ("model.hidden=[-3]", "model.hidden", "from 1"),
    ("model=cnn model.kernel_size=0", "model.kernel_size", "odd"),
    ("optim.betas=[2,0.9]", "optim.betas", "[0, 1)"),
    ("optim=sgd optim.momentum=-1", "optim.momentum", "[0, 1)"),
    ("sched=step sched.step_size=0", "sched.step_size", ">= 1"),
    ("-m launcher=parallel launcher.n_jobs=0", "launcher.n_jobs", "from 1 to"),
    ("-m launcher=stacked launcher.stack_size=0", "launcher.stack_size", "from 1 to"),
    ("sched=step sched.gamma=-1", "sched.gamma", "> 0"),
    ("model=cnn model.channels=[]", "model.channels", "1 to 4"),
    ("tracking.experiment=", "tracking.experiment", "non-empty"),
    ("tracking.experiment=" + "x" * 10_000, "tracking.experiment", "at most 256"),
    ("optim=sgd optim.momentum=0 optim.nesterov=true", "optim.nesterov", "momentum > 0"),
    ("train.divergence_loss=1", "train.divergence_loss", "chance level"),
    ("optim.lr=-0.1", "optim.lr", "> 0"), ("optim.lr=0", "optim.lr", "> 0"),
    ("dropout.p=1.0", "dropout.p", "[0, 1)"), ("dropout.p=-0.1", "dropout.p", "[0, 1)"),
    ("train.batch_size=0", "train.batch_size", ">= 1"),
    ("train.batch_size=100000", "train.batch_size", "at most the training set's 500 images"),
    ("train.epochs=0", "train.epochs", ">= 1"), ("data.val_size=0", "data.val_size", ">= 1"),
    ("data.val_size=60000", "data.val_size", "smaller than the 600 training images"),
    ("data.limit=0", "data.limit", "at least 1"), ("threads=-1", "threads", "up to 1024"),
    ("objectives=[val/loss,speed]", "objectives", "distinct names from val/loss, parameters"),
    ("objectives=[val/loss,val/loss]", "objectives", "distinct names"),
]


@pytest.mark.parametrize("command, key, allowed", BAD_VALUES, ids=[b[0][:40] for b in BAD_VALUES])
def test_values_out_of_range_are_one_line_naming_key_and_allowed(tiny_data, command, key, allowed):
    flags = [word for word in command.split() if word.startswith("-")]  # -m comes first
    given = [word for word in command.split() if not word.startswith("-")]
    problem = first_problem([*flags, *tiny_overrides(tiny_data), *given])
    assert problem is not None and "\n" not in problem and len(problem) < 400
    assert problem.startswith(f"{key}=") and "is not allowed" in problem and allowed in problem


# --- Hydra's own errors (composition), as one line ----------------------------------------------
HYDRA_ERRORS = [
    ("model=resnet", "model=resnet is not an option: model is one of cnn, cnn_bn, ffnn"),
    ("train.epoch=3", "did you mean train.epochs?"),
    ("+train.epoch=3", "did you mean train.epochs?"),  # `+` adds no key the schema lacks
    ("+foo=1", "foo=1 is not allowed: not a key of the config"),
    ("optim.lr=abc", "optim.lr=abc is not allowed: a number"),
    ("train.batch_size=1.5", "train.batch_size=1.5 is not allowed: an integer"),
    ("train.batch_size=true", "train.batch_size=true is not allowed: an integer"),
    ("train.epochs=1e9", "train.epochs=1e9 is not allowed: an integer"),
    ("optim.lr=[1,2", "optim.lr=[1,2: cannot parse this override"),
    ("optim.lr=1e-3,1e-4", "optim.lr=1e-3,1e-4: a comma sweeps several values, which needs -m"),
    ("~train.epochs", "~train.epochs"),
    ("optim._target_=os.system", "optim._target_ is wiring"),
    ("experiment=nope", "experiment is one of best_cnn"),
    (f"model.hidden=[{','.join(['1'] * 10_000)}]", "model.hidden: 9,999 commas"),  # not minutes
]


@pytest.mark.parametrize("override, says", HYDRA_ERRORS, ids=[h[0][:30] for h in HYDRA_ERRORS])
def test_hydra_errors_are_one_line_naming_the_key(tiny_data, override, says):
    problem = first_problem([*tiny_overrides(tiny_data), override])
    assert problem is not None and "\n" not in problem
    assert says in problem


def test_a_sweep_runs_when_some_jobs_can_and_is_refused_when_none_can(tiny_data):
    base = ["-m", *tiny_overrides(tiny_data)]
    assert first_problem([*base, "optim.lr=1e-3,-1"]) is None  # the bad job is recorded FAILED
    problem = first_problem([*base, "optim.lr=-1,-2"])
    assert problem.startswith("optim.lr=-1.0 is not allowed") and "every other job" in problem
    problem = first_problem([*base, "optim.lr=1e-3,abc"])  # Hydra would stop at the second job
    assert problem.startswith("optim.lr=abc is not allowed: a number")


@pytest.mark.slow
def test_refused_command_lines_exit_2_in_one_line_and_leave_no_folder(tiny_data, tmp_path):
    for command in (["model=resnet"], ["+train.epoch=3"], ["optim.lr=nan"],
                    ["-m", "launcher=parallel", "launcher.n_jobs=0"]):
        result = run_lab([*command, *tiny_overrides(tiny_data)], cwd=tmp_path)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
        assert result.stdout == ""
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


# --- divergence --------------------------------------------------------------------------------
def test_a_finite_exploding_loss_is_divergence_and_fails_the_run(tiny_data, tmp_path):
    cfg = compose_config(tracked(tiny_data, tmp_path, "optim.lr=1e9", "init=default",
                                 f"output_dir={tmp_path / 'out'}"))
    with pytest.raises(DivergedError, match=r"above train.divergence_loss=100 in epoch 1 at step"):
        job.run(cfg)
    client = MlflowClient(store(tmp_path))
    (run,) = client.search_runs([client.get_experiment_by_name("mnist-lab").experiment_id])
    assert run.info.status == "FAILED" and "training loss became" in run.data.tags["error"]


def test_a_non_finite_loss_is_divergence_too(tiny_data):
    from mnist_lab.checkpoint import TrainingState
    from mnist_lab.data import load_mnist
    from mnist_lab.loop import Recipe, fit

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    torch.nn.init.constant_(model[1].weight, float("nan"))
    data = load_mnist(tiny_data, 100, 0, verify=False)
    state = TrainingState.fresh(model, torch.optim.SGD(model.parameters(), lr=0.1), None, 0)
    with pytest.raises(DivergedError, match="became non-finite in epoch 1 at step 1"):
        fit(state, data, Recipe(epochs=1, batch_size=32, divergence_loss=100.0))
    assert state.epoch == 0  # the diverged epoch is not counted as trained


@pytest.mark.slow
def test_a_single_diverged_run_exits_1_with_one_line(tiny_data, tmp_path):
    result = run_lab([*tiny_overrides(tiny_data), "optim.lr=1e9", "init=default", "plots=false"],
                     cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "in epoch 1 at step" in result.stderr and "lower optim.lr" in result.stderr


# --- the store and the data ---------------------------------------------------------------------
def test_a_read_only_store_fails_in_one_line_before_data_is_read(tiny_data, tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr(job, "load_mnist", lambda *a, **k: loads.append(a))
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    real_access = os.access
    for read_only in (db, db.parent):  # the file, then the folder SQLite writes its journal in
        db.touch()
        monkeypatch.setattr(store_module.os, "access", lambda p, mode, ro=read_only:
                            False if p == ro else real_access(p, mode))
        with pytest.raises(TrackingError, match="read-only"):
            job.run(compose_config(tracked(tiny_data, tmp_path)))
    assert loads == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files")
def test_a_chmod_read_only_store_is_refused(tiny_data, tmp_path):
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    db.touch()
    db.chmod(0o444)
    with pytest.raises(TrackingError, match="read-only"):
        job.run(compose_config(tracked(tiny_data, tmp_path)))


def test_a_corrupt_store_is_one_line_without_sql(tiny_data, tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr(job, "load_mnist", lambda *a, **k: loads.append(a))
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    db.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(TrackingError) as err:
        job.run(compose_config(tracked(tiny_data, tmp_path)))
    message = str(err.value)
    assert "not an SQLite database" in message and "\n" not in message and "SQL:" not in message
    assert loads == []


def test_store_errors_from_mlflow_carry_no_sql(tmp_path, monkeypatch):
    import mlflow

    def broken(*_, **__):
        raise RuntimeError("(sqlite3.DatabaseError) disk I/O error\n[SQL: SELECT name FROM x]")

    monkeypatch.setattr(mlflow, "MlflowClient", broken)
    with pytest.raises(TrackingError) as err:
        store_module.connect(OmegaConf.create({"uri": store(tmp_path), "experiment": "e"}))
    assert "disk I/O error" in str(err.value) and "SQL" not in str(err.value).replace("SQLite", "")


def test_an_output_folder_that_cannot_be_made_stops_the_run_before_training(tiny_data, tmp_path,
                                                                            capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"^output_dir=.* is not allowed: a folder this run"):
        job.run(compose_config(tracked(tiny_data, tmp_path, f"output_dir={blocker}/out")))
    assert "epoch" not in capsys.readouterr().out and not (tmp_path / "store").exists()


def test_data_errors_come_before_the_store_is_opened(tiny_data, tmp_path):
    (tiny_data / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="not found"):
        job.run(compose_config(tracked(tiny_data, tmp_path)))
    assert not (tmp_path / "store").exists()


def test_an_unreadable_data_file_is_called_unreadable_not_corrupt(tiny_data, monkeypatch):
    from pathlib import Path

    from mnist_lab.data import read_idx

    target = tiny_data / "train-images-idx3-ubyte.gz"
    real = Path.read_bytes

    def read_bytes(path):
        if path == target:
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(DataError, match="unreadable \\(permission denied\\)"):
        read_idx(target)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_a_chmod_unreadable_data_file_is_called_unreadable(tiny_data):
    from mnist_lab.data import read_idx

    target = tiny_data / "train-images-idx3-ubyte.gz"
    target.chmod(0)
    with pytest.raises(DataError, match="unreadable"):
        read_idx(target)


# --- checkpoints ---------------------------------------------------------------------------------
def truncated_checkpoint(path):
    torch.save({"model": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:2000])


@pytest.mark.parametrize("fill, says", [
    (lambda p: p.write_text("hello world"), "not a PyTorch checkpoint"),
    (lambda p: p.write_bytes(open("/etc/passwd", "rb").read()), "not a PyTorch checkpoint"),
    (truncated_checkpoint, "truncated or incomplete"),
    (lambda p: torch.save({"epoch": 3}, p), "not a resumable checkpoint"),
    (lambda p: torch.save([1, 2], p), "not a resumable checkpoint"),
], ids=["text", "passwd", "truncated", "partial", "a list"])
def test_a_broken_last_checkpoint_is_one_clear_line_on_resume(tiny_data, fill, says):
    cfg = compose_config([*tiny_overrides(tiny_data), "resume=true"])
    last = checkpoint.folder_for(cfg) / checkpoint.LAST
    last.parent.mkdir(parents=True)
    fill(last)
    with pytest.raises(CheckpointError, match=says) as err:
        job.run(cfg)
    assert "\n" not in str(err.value) and "unsafe" not in str(err.value)


# --- predict -------------------------------------------------------------------------------------
@pytest.fixture
def saved_model(tiny_data, tmp_path):
    """An untrained FFNN's best.pth and config.yaml: what predict --checkpoint/--config reads."""
    cfg = compose_config(tiny_overrides(tiny_data))
    torch.save(job.build_model(cfg).state_dict(), tmp_path / "best.pth")
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    digit = Image.new("L", (40, 40), 0)
    digit.paste(255, (15, 8, 25, 32))
    digit.save(tmp_path / "one.png")
    return tmp_path


def predict(capsys, *args):
    code = main(["predict", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_refuses_bad_model_files_in_one_line(saved_model, tmp_path, capsys):
    image, state = saved_model / "one.png", saved_model / "best.pth"
    config = saved_model / "config.yaml"
    (tmp_path / "text.pth").write_text("hello")
    (tmp_path / "notes.yaml").write_text("{{{ not: yaml")
    (tmp_path / "other.yaml").write_text(config.read_text().replace("name: ffnn", "name: ffnn\n"
                                                                   "  channels: [4]", 1))
    cnn = compose_config(["model=cnn"])
    torch.save(job.build_model(cnn).state_dict(), tmp_path / "cnn.pth")
    (tmp_path / "evil.pth").write_bytes(b"\x80\x02cos\nsystem\nq\x00.")
    for checkpoint_file, config_file, says in [
        (tmp_path / "text.pth", config, "not a PyTorch checkpoint"),
        (tmp_path / "missing.pth", config, "file not found"),
        (tmp_path / "evil.pth", config, "refused to load"),
        (tmp_path / "cnn.pth", config, "does not fit the ffnn model"),
        (state, tmp_path / "notes.yaml", "not a run's config.yaml"),
        (state, tmp_path / "missing.yaml", "config file not found"),
    ]:
        code, out, err = predict(capsys, image, "--checkpoint", checkpoint_file,
                                 "--config", config_file)
        assert code == 2 and out == "", (says, err)
        assert err.count("\n") == 1 and says in err, (says, err)


def png_claiming(path, width, height):
    """A tiny PNG whose header claims width x height pixels, as a decompression bomb's does."""
    Image.new("L", (1, 1)).save(path)
    raw = bytearray(path.read_bytes())
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    path.write_bytes(bytes(raw))


def test_predict_refuses_huge_images_alone_and_classifies_the_rest(saved_model, tmp_path, capsys):
    bomb, big = tmp_path / "bomb.png", tmp_path / "big.png"
    png_claiming(bomb, 50_000, 50_000)
    png_claiming(big, 12_000, 12_000)
    good = saved_model / "one.png"
    code, out, err = predict(capsys, bomb, good, big, "--checkpoint", saved_model / "best.pth",
                             "--config", saved_model / "config.yaml")
    assert code == 1
    assert f"{bomb}: 50000x50000 pixels is more than" in err
    assert f"{big}: 12000x12000 pixels is more than" in err and err.count("\n") == 2
    assert out.startswith(f"{good}: ")


def test_a_sweep_too_big_or_empty_is_refused_before_hydra_lists_its_jobs():
    from mnist_lab.preflight import first_problem

    assert first_problem(["-m", "seed=range(0)"]) == (
        "seed=range(0): an empty sweep, it gives seed no value, so no job would run")
    assert first_problem(["-m", "seed=range(1000000)", "optim.lr=1e-3,1e-4"]) == (
        "a sweep of 2,000,000 jobs; at most 10,000 (fewer values, or hydra/sweeper=optuna with "
        "a budget of n_trials)")
    assert first_problem(["-m", "seed=range(0, 20, 2)"]) is None


@pytest.mark.slow
def test_a_sweep_or_checkpoint_folder_that_cant_be_made_is_refused_before_any_record(tiny_data,
                                                                                     tmp_path):
    (tmp_path / "a-file").write_text("")
    store_uri = f"tracking.uri=sqlite:///{tmp_path}/store/mlflow.db"
    sweep = run_lab(["-m", *tiny_overrides(tiny_data), "tracking=local", store_uri,
                     "optim.lr=1e-3,1e-4", f"hydra.sweep.dir={tmp_path}/a-file/sweep"])
    single = run_lab([*tiny_overrides(tiny_data), "tracking=local", store_uri,
                      f"checkpoint.dir={tmp_path}/a-file/ck", f"hydra.run.dir={tmp_path}/out"])
    for result, key in ((sweep, "hydra.sweep.dir"), (single, "checkpoint.dir")):
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.startswith(f"error: {key}=") and result.stderr.count("\n") == 1
        assert "a folder this" in result.stderr and "Not a directory" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "tiny"]  # no store, no run
