"""A run's MLflow model: a pyfunc that reads digit images as users have them.

Logged at a single run's end (and for a sweep's best run, or by `mnist-lab register`) under the
name `model`. It carries the run's `config.yaml` and `best.pth` as artifacts and this package as
code, so `mlflow.pyfunc.load_model("runs:/RUN_ID/model")` works wherever torch, Pillow, NumPy and
Hydra are installed. Its input is a list of image files, base64-encoded (PNG, JPEG, ...; any size,
either polarity, grayscale or colour; a `data:image/...;base64,` prefix is allowed); each is
prepared by `images.to_mnist`, as `mnist-lab predict` prepares it, and answered as predict's
`--json` answers: `{"prediction": 7, "top3": [{"digit": 7, "probability": 0.99}, ...],
"error": null}`; for an image that shows no digit or is no image, `prediction` and `top3` are
null and `error` says why. In Python, each answer is an `Answer`.

`unwrap_python_model().net` is the lab's own network (the `CNN` or `FFNN` class, in eval mode),
for Python users who want the layers rather than the images.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Optional

import mlflow.pyfunc
import pydantic
import torch
from omegaconf import DictConfig

from mnist_lab.errors import ModelSourceError
from mnist_lab.images import ImageError, classify, to_mnist
from mnist_lab.schema import load_logged_config


PACKAGE = Path(__file__).resolve().parent


def model_from_files(config_path: Path | str, state_path: Path | str
                     ) -> tuple[torch.nn.Module, DictConfig]:
    """The model that a logged config.yaml builds, with best.pth loaded (weights_only)."""
    config_path, state_path = Path(config_path), Path(state_path)
    from mnist_lab.checkpoint import load_safely
    from mnist_lab.errors import CheckpointError
    from mnist_lab.models import build_model

    def first_line(err: Exception) -> str:
        text = str(err).strip()
        return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__

    if not config_path.is_file():
        raise ModelSourceError(f"{config_path}: config file not found")
    try:
        cfg = load_logged_config(config_path)
        model = build_model(cfg)
    except Exception as err:  # YAML errors, keys the schema lacks, values that build nothing
        raise ModelSourceError(f"{config_path}: not a run's config.yaml "
                               f"({first_line(err)})") from None
    try:
        model.load_state_dict(load_safely(state_path))
    except CheckpointError as err:
        raise ModelSourceError(str(err)) from None
    except Exception as err:  # another architecture, or not a state_dict at all
        raise ModelSourceError(f"{state_path}: does not fit the {cfg.choices.model} model that "
                               f"{config_path} describes (another run's checkpoint?): "
                               f"{first_line(err)}") from None
    return model.eval(), cfg


def decode(text: str, index: int) -> bytes:
    """The bytes of one base64-encoded image; a data URL's `data:...;base64,` prefix is dropped."""
    try:
        return base64.b64decode(text.partition(",")[2] if text.startswith("data:") else text,
                                validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"image {index}: not base64 (send the file's bytes, base64-encoded)") from None


class Ranked(pydantic.BaseModel):
    digit: int
    probability: float


class Answer(pydantic.BaseModel):
    """What the model says of one image: predict --json's answer, or why there is none."""
    prediction: Optional[int] = None
    top3: Optional[list[Ranked]] = None
    error: Optional[str] = None


class DigitReader(mlflow.pyfunc.PythonModel):
    """Base64-encoded image files in, predict's answer for each out (MLflow checks both types)."""

    def load_context(self, context) -> None:
        self.net, _ = model_from_files(Path(context.artifacts["config"]),
                                       Path(context.artifacts["weights"]))

    def predict(self, context, model_input: list[str], params=None) -> list[Answer]:
        answers = []
        for index, text in enumerate(model_input):
            try:
                image = to_mnist(decode(text, index), name=f"image {index}")
            except ImageError as err:
                answers.append(Answer(error=str(err)))
                continue
            answers.append(Answer(**classify(self.net, image.unsqueeze(0))[0]))
        return answers


def log_digit_model(run_id: str, config_path: Path, state_path: Path) -> None:
    """Log the run's `model`: the DigitReader over its config.yaml and best.pth, as MLflow's
    model from code (served_model.py; nothing pickled). Opens the run
    with MLflow's fluent API, which `registry.logged_model_id` puts back as it was."""
    import mlflow
    from importlib.metadata import version

    requirements = [f"{name}=={version(name).split('+')[0]}"
                    for name in ("torch", "pillow", "numpy", "hydra-core", "omegaconf")]
    with mlflow.start_run(run_id=run_id):
        mlflow.pyfunc.log_model(name="model", python_model=str(PACKAGE / "served_model.py"),
                                artifacts={"config": str(config_path), "weights": str(state_path)},
                                code_paths=[str(PACKAGE)], pip_requirements=requirements)
