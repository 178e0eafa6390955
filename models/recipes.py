"""The training recipes, all hyperparameters in one visible place.

``book``: the chapters' plain SGD (lr 1e-2, 3e-3 for net_resdeep), batch 64, cross-entropy,
100 epochs, no augmentation, constant learning rate. It reproduces the book's table.

``fast``: reach val >= 0.93 with a <100k-param convnet in minutes on a 2-core CPU. Each choice
buys accuracy per CPU-second:
- net_fast by default (BN + ReLU, pooling right after the first conv of each group) - BN lets
  a high learning rate work, and most convolutions run at 16x16 or smaller;
- SGD with Nesterov momentum 0.9 and weight decay 5e-4 at batch 256 (fewer, larger steps are
  cheaper on a CPU);
- one-cycle schedule: linear warm-up for the first 20% of steps, then linear decay to zero,
  which converges in a few dozen epochs instead of hundreds;
- random crop (reflect pad 2) + horizontal flip on uint8 batches (no per-image PIL), so the
  net cannot memorise 10,000 images in 20 epochs;
- label smoothing 0.1, which tends to add a little test accuracy for free.
The fast recipe trains any model (``make serve`` trains ``net`` with it); only the default
model differs.
"""

from __future__ import annotations

RECIPES: dict[str, dict] = {
    "book": {
        "default_model": "net", "epochs": 100, "batch_size": 64, "lr": 1e-2,
        "momentum": 0.0, "nesterov": False, "weight_decay": 0.0, "label_smoothing": 0.0,
        "schedule": "constant", "warmup": 0.0, "crop_pad": 0, "flip": False,
    },
    "fast": {
        "default_model": "net_fast", "epochs": 20, "batch_size": 256, "lr": 0.1,
        "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "label_smoothing": 0.1,
        "schedule": "onecycle", "warmup": 0.2, "crop_pad": 2, "flip": True,
    },
}

# The book trains its 100-block net_resdeep with a smaller step; so does the book recipe here.
LR_BY_MODEL = {("book", "net_resdeep"): 3e-3}


def recipe_for(name: str, model: str, **overrides) -> dict:
    """The recipe ``name`` for ``model``, with CLI overrides (None means 'keep the default')."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    recipe = {"name": name, **RECIPES[name]}  # the name travels with the checkpoint
    recipe.pop("default_model")
    recipe["lr"] = LR_BY_MODEL.get((name, model), recipe["lr"])
    recipe.update({k: v for k, v in overrides.items() if v is not None})
    return recipe
