"""The self-describing checkpoint: everything the exporter needs, loadable with weights_only=True.

Written by ``models.train``; read by ``export``. Only plain Python values and tensors go in, so
``torch.load(path, weights_only=True)`` can read it and never unpickles arbitrary objects.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from models.nets import build, count_params

FORMAT = "cifar2-checkpoint/1"
CLASSES = ["airplane", "bird"]
MEAN = [0.4915, 0.4823, 0.4468]
STD = [0.2470, 0.2435, 0.2616]
REQUIRED_KEYS = ("format", "model", "model_args", "state_dict", "classes", "mean", "std")


class CheckpointError(ValueError):
    """A file that is missing, unreadable, or not one of our checkpoints."""


def make_checkpoint(
    name: str,
    model_args: dict,
    model: nn.Module,
    *,
    metrics: dict | None = None,
    recipe: dict | None = None,
    data_fingerprint: str = "",
    classes: list[str] = CLASSES,
    mean: list[float] = MEAN,
    std: list[float] = STD,
) -> dict:
    return {
        "format": FORMAT,
        "model": name,
        "model_args": dict(model_args),
        "params": count_params(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "classes": list(classes),
        "mean": list(mean),
        "std": list(std),
        "metrics": dict(metrics or {}),
        "recipe": dict(recipe or {}),
        "data_fingerprint": data_fingerprint,
        "versions": {"torch": str(torch.__version__)},  # TorchVersion is refused by weights_only
    }


def save_checkpoint(ckpt: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint under the real name
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint safely; raise CheckpointError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (train one with `python -m models.train`)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    # The weights_only unpickler raises KeyError, IndexError, ... on some non-pickle bytes.
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, OSError,
            KeyError, IndexError, ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: not a readable cifar2 checkpoint ({first[:200]}); "
            "only files written by `python -m models.train` are accepted"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cifar2 checkpoint (expected format {FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint is missing {', '.join(missing)}")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """Rebuild the model from the checkpoint alone, in eval mode. Raises UnknownModelError."""
    model = build(ckpt["model"], **ckpt["model_args"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
