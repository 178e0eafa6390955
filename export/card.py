"""model.json, the model card: everything the service and the store need to know about an
artifact folder, written next to the exported files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import onnx
import onnxruntime
import torch

from export.formats import ArtifactError
from export.graph import INPUT_NAME, OUTPUT_NAMES
from models.checkpoint import sha256_of

CARD = "model.json"
PARITY = "parity.json"

IO_SPEC = {
    "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["N", 3, 32, 32]},
    "outputs": {name: {"dtype": "float32", "shape": ["N", 2]} for name in OUTPUT_NAMES},
}


def versions() -> dict:
    return {"torch": str(torch.__version__), "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def model_card(ckpt: dict, checkpoint_sha256: str, artifact_dir: Path, files: list[str]) -> dict:
    return {
        "model": ckpt["model"],
        "model_args": ckpt["model_args"],
        "params": ckpt.get("params"),
        "classes": ckpt["classes"],
        "mean": ckpt["mean"],
        "std": ckpt["std"],
        "metrics": ckpt.get("metrics", {}),
        "recipe": ckpt.get("recipe", {}),
        "data_fingerprint": ckpt.get("data_fingerprint", ""),
        "checkpoint_sha256": checkpoint_sha256,
        "io": IO_SPEC,
        "versions": versions(),
        "files": {f: sha256_of(artifact_dir / f) for f in files},
    }


def _plain(obj):
    """JSON has no tuples, tensors or infinities; make the card readable by any JSON parser."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def write_json(path: Path, obj: dict) -> Path:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_plain(obj), indent=2) + "\n")
    tmp.replace(path)
    return path


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; re-run `python -m export <checkpoint>`")
    try:
        obj = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON, truncated or corrupt ({e}); "
                            "re-run `python -m export <checkpoint>`") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    return obj


def changed_files(folder: Path, model_card: dict) -> list[str]:
    """The files of the card that are missing from ``folder`` or whose sha256 differs."""
    return [name for name, digest in model_card.get("files", {}).items()
            if not (folder / name).is_file() or sha256_of(folder / name) != digest]
