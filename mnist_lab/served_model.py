"""The model file that `served.log_digit_model` logs (MLflow's "models from code")."""

import mlflow.models

from mnist_lab.served import DigitReader

mlflow.models.set_model(DigitReader())
