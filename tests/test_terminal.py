"""What a user reads: the end of a run, its run.log, refusals that leave nothing, the help."""

import shlex
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from helpers import ROOT, compose_config, run_lab, tiny_overrides
from mnist_lab import cli, job, policy
from mnist_lab.checkpoint import TrainingState
from mnist_lab.compare import format_table, row_for
from mnist_lab.context import JobContext
from mnist_lab.data import load_mnist
from mnist_lab.loop import Recipe, fit
from mnist_lab.tables import write_table


@pytest.mark.slow
def test_a_run_ends_saying_where_its_files_and_mlflow_page_are(tiny_data, tmp_path):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    out = tmp_path / "outputs" / "day" / "time"
    result = run_lab([*tiny_overrides(tiny_data), "model=cnn", "train.epochs=1", "tracking=local",
                      f"tracking.uri={uri}", f"hydra.run.dir={out}"])
    assert result.returncode == 0, result.stderr
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("mnist-lab").experiment_id])
    lines = result.stdout.splitlines()
    assert f"files: {out}/ (report.txt, figures, best.pth, config.yaml)" in lines
    page = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert any(line.startswith("MLflow: http://127.0.0.1:5000/" + page) for line in lines)
    assert f"compare with the other runs: mnist-lab compare --uri {uri}" in lines
    assert "* marks each new lowest" in result.stdout
    # torch.export's packaging warning is not the user's business
    assert "No complete tensor found" not in result.stderr
    # run.log holds what the run printed
    log = (out / "run.log").read_text()
    assert "epoch   1/1" in log and "overall:" in log and "files: " in log


@pytest.mark.parametrize("bad", ["optim.lr=-1", "data.root=/nonexistent/mnist"])
def test_a_refused_run_leaves_no_output_folder(tiny_data, tmp_path, bad):
    out = tmp_path / "outputs" / "day" / "time"
    result = run_lab([*tiny_overrides(tiny_data), bad, f"hydra.run.dir={out}"])
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    assert not (tmp_path / "outputs" / "day").exists()  # the day's folder too, if it was empty


def test_the_progress_bar_shows_the_epoch_of_all_and_the_running_loss(tiny_data, capsys):
    cfg = compose_config([*tiny_overrides(tiny_data), "train.epochs=1"])
    data = load_mnist(tiny_data, 100, 0, verify=False)
    model = job.build_model(cfg)
    optimizer, _ = job.build_optimizer(cfg, model, 125)
    fit(TrainingState.fresh(model, optimizer, None, 0), data,
        Recipe(epochs=1, batch_size=4, progress="bar"), [])
    bar = capsys.readouterr().err
    assert "epoch 1/1" in bar and "train/loss 0." in bar


def test_help_lists_every_option_and_describes_every_command(capsys):
    text = run_lab(["--help"]).stdout
    assert text.startswith("mnist-lab: train and evaluate MNIST classifiers")
    for folder in [*sorted((ROOT / "conf").iterdir()), ROOT / "experiments"]:
        if folder.is_dir() and folder.name != "hydra":  # Hydra's own groups: --hydra-help
            group = "experiment" if folder.name == "experiments" else folder.name
            line = next(x for x in text.splitlines() if x.strip().startswith(f"{group}: "))
            assert {p.stem for p in folder.glob("*.yaml")} == set(
                line.split(": ", 1)[1].split(", ")), group
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "Work with the runs that `python run.py` trained" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    assert capsys.readouterr().out.startswith("usage: mnist-lab bench")
    for command in ("compare", "predict", "evaluate", "register", "serve", "rerun"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        usage, description = capsys.readouterr().out.split("\n\n")[:2]
        assert usage.startswith(f"usage: mnist-lab {command}")
        assert not description.startswith(("positional", "options")), command


def fake_run(name: str, status: str, epochs: str, metrics: dict) -> SimpleNamespace:
    params = {"model.name": "cnn", "optim.name": "adam", "optim.lr": "0.001", "dropout.p": "0.2",
              "init.name": "normal", "train.epochs": epochs, "train.batch_size": "64",
              "data.limit": "None", "seed": "0", "sched.name": "none"}
    info = SimpleNamespace(run_name=name, run_id=name * 4, status=status,
                           start_time=1000, end_time=6000 if status == "FINISHED" else None)
    return SimpleNamespace(info=info, data=SimpleNamespace(params=params, metrics=metrics, tags={}))


def test_compare_shows_what_differs_between_runs_and_why_one_has_no_numbers(tmp_path):
    runs = [fake_run("a", "FINISHED", "2", {"best/val_loss": 0.123456789, "test/acc": 0.9812345,
                                            **{f"test/acc_class_{d}": 0.98 for d in range(10)}}),
            fake_run("b", "KILLED", "20", {})]
    rows = [row_for(r) for r in runs]
    header, first, second = format_table(rows).splitlines()
    assert header.split()[:8] == ["run", "model", "optim", "lr", "dropout", "init", "epochs",
                                  "status"]  # batch_size, limit, seed, sched are the same
    assert second.split()[6:8] == ["20", "KILLED"]
    assert "0.1235" in first and "0.9812" in first
    write_table(rows, tmp_path / "compare.csv", tmp_path / "compare.md")
    markdown = (tmp_path / "compare.md").read_text()
    assert "None" not in markdown and "0.1235" in markdown and "0.123456789" not in markdown


def test_figure_titles_name_the_run_and_the_settings_its_name_leaves_out():
    cfg = compose_config(["model=cnn", "train.epochs=2", "train.batch_size=64", "data.limit=6000"])
    assert job.figure_label(cfg) == "cnn-adam-lr0.001-p0.2, 2 epochs, batch 64, 6000 training images"
    assert job.figure_label(compose_config([])) == "ffnn-adam-lr0.001-p0.2, 20 epochs, batch 20"


def test_the_resume_hint_is_a_command_that_gives_back_each_value_with_spaces():
    """The hint printed when a run is interrupted, pasted into a shell, gives Hydra the same
    overrides (resume=true in place of resume=...), values with spaces included."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = ["model=cnn", "tracking.experiment=my runs", "data.root='/tmp/a b'", "resume=false"]
    hint = policy.resume_hint(compose_config(given), JobContext(overrides=given))
    argv = shlex.split(hint.splitlines()[-1])
    assert argv[:2] == ["python", "run.py"]
    parsed = OverridesParser.create().parse_overrides(argv[2:])
    assert {o.key_or_group: o.value() for o in parsed} == {
        "model": "cnn", "tracking.experiment": "my runs", "data.root": "/tmp/a b", "resume": True}
    hydra = ["hydra.mode=MULTIRUN", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=7",
             "hydra.sweep.dir='/tmp/my sweep'"]
    sweep = shlex.split(policy.resume_command(given, hydra, sweep=True))
    assert sweep[:3] == ["python", "run.py", "-m"]
    assert sweep[3:] == [*argv[2:-1], *hydra[1:], "resume=true"]  # as given: Hydra parses it


def test_a_sweeps_job_says_where_the_sweep_is():
    sweep = {"jobs": 8, "started": 1000.0}
    assert JobContext(job_num=0, progress=sweep).progress_line(1000.4) == "job 1 of 8, 0:00 elapsed"
    # three jobs started in 90 s: the five left take about 150 s more
    assert JobContext(job_num=3, progress=sweep).progress_line(1090.0) == (
        "job 4 of 8, 1:30 elapsed, about 2:30 left")
    assert JobContext(job_num=1, progress={"jobs": 2, "started": 0.0}).progress_line(4000.0) == (
        "job 2 of 2, 1:06:40 elapsed, about 1:06:40 left")
    assert JobContext().progress_line(5.0) is None  # a single run

