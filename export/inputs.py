"""The parity inputs: seeded random uint8 batches, plus the real test images when data is given.

Real images come from the training stage's loader (``models.data.load_split``) so the export
checks exactly the pixels the model was evaluated on. No data source is ever downloaded here:
without ``--data-dir`` / ``CIFAR2_DATA`` the gate runs on the random batches alone.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from export.parity import RANDOM_BATCH_SIZES, RANDOM_SEED, Batch, random_batches


def images_sha256(batches: list[Batch]) -> str:
    h = hashlib.sha256()
    for b in batches:
        h.update(np.ascontiguousarray(b.images).tobytes())
    return h.hexdigest()


def real_test_batch(data_dir: str | Path | None) -> tuple[Batch | None, dict]:
    """The whole real test split as one batch, or (None, reason) when no data dir is set."""
    from models.data import load_split, resolve_data_dir

    root = resolve_data_dir(data_dir)
    if root is None:
        return None, {"used": False, "why": "no --data-dir and CIFAR2_DATA is not set"}
    images = load_split(root, "test")[0].numpy()
    return Batch("test", images), {"used": True, "images": len(images),
                                   "sha256": images_sha256([Batch("test", images)])}


def parity_batches(data_dir: str | Path | None,
                   sizes: tuple[int, ...] = RANDOM_BATCH_SIZES) -> tuple[list[Batch], dict]:
    """All parity batches and a description of them for parity.json."""
    batches = random_batches(sizes)
    described = {"random": {"seed": RANDOM_SEED, "batch_sizes": list(sizes),
                            "sha256": images_sha256(batches)}}
    real, described["test_images"] = real_test_batch(data_dir)
    if real is not None:
        batches.append(real)
    return batches, described
