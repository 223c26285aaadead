"""Models: the LightGBM wrapper, training splits and MLflow registry helpers."""
