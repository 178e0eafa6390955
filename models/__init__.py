"""CIFAR-2 data, the chapter 7/8 model zoo and the training entry points."""

from models.nets import MODELS, UnknownModelError, build, count_params, model_args

__all__ = ["MODELS", "UnknownModelError", "build", "count_params", "model_args"]
