"""mnist-lab: the MNIST notebook study as a Hydra + PyTorch + MLflow experiment lab."""
