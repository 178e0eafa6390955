"""The parity inputs: seeded random uint8 batches, plus the real test images when data is given.

Real images come from the training stage's loader (``models.data.load_split``) so the export
checks exactly the pixels the model was evaluated on. No data source is ever downloaded here:
without ``--data-dir`` / ``CIFAR2_DATA`` the gate runs on the random batches alone.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from export.parity import (
    RANDOM_BATCH_SIZES,
    RANDOM_SEED,
    Batch,
    Outputs,
    random_batches,
    unpack_reference,
)


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


def recorded_batches(parity: dict, test_images: np.ndarray | None = None
                     ) -> tuple[list[Batch], list[Outputs]]:
    """The parity inputs of an export and their eager reference, rebuilt from parity.json alone
    (no torch, no checkpoint): the seeded random batches, plus the real test images when they
    are given and parity.json holds their reference. Raises ValueError naming what does not
    match the export (KeyError/TypeError for a parity.json without a reference)."""
    recorded = parity["inputs"]["random"]
    batches = random_batches(recorded["batch_sizes"], recorded["seed"])
    if images_sha256(batches) != recorded["sha256"]:
        raise ValueError("the seeded random inputs differ from those at export time "
                         "(another numpy?)")
    references = unpack_reference(parity["reference"]["random"], batches)
    if test_images is not None:
        test = Batch("test", np.ascontiguousarray(test_images, dtype=np.uint8))
        described = parity["inputs"].get("test_images", {})
        if "test" not in parity["reference"] or not described.get("used"):
            raise ValueError("parity.json has no eager reference for real test images "
                             "(export with --data-dir or CIFAR2_DATA)")
        if images_sha256([test]) != described["sha256"]:
            raise ValueError(f"the {len(test.images)} test images are not the ones exported "
                             f"with ({described['images']} images, sha256 differs)")
        batches.append(test)
        references += unpack_reference(parity["reference"]["test"], [test])
    return batches, references
