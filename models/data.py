"""CIFAR-2 (CIFAR-10's airplane and bird) as cached uint8 tensors.

    python -m models.data [--data-dir DIR]      # decode once, print the split sizes

Sources, in order: ``--data-dir`` / ``CIFAR2_DATA`` (an ImageFolder tree
``{train,test}/{airplane,bird}/*``), else torchvision's CIFAR-10 download into ``data/``.
The decoded images are cached as one tensor file under ``data/`` (``CIFAR2_CACHE`` moves it)
keyed by a fingerprint of the source, so no run decodes 12,000 JPEGs twice.

Other stages use ``load_split(data_dir, "test")`` to get ``(images uint8 [N,3,32,32], labels)``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from models.checkpoint import CLASSES, save_checkpoint

SPLITS = ("train", "test")
CIFAR10_LABELS = (0, 2)  # airplane, bird in CIFAR-10 -> 0, 1 here
CACHE_FORMAT = "cifar2-cache/1"


class DataError(ValueError):
    """Missing, malformed or unreadable data; the message names the problem and the fix."""


@dataclass
class Cifar2:
    train_x: torch.Tensor  # uint8 [N, 3, 32, 32], RGB 0-255
    train_y: torch.Tensor  # int64 [N], 0 airplane, 1 bird
    test_x: torch.Tensor
    test_y: torch.Tensor
    fingerprint: str
    source: str


def default_cache_dir() -> Path:
    return Path(os.environ.get("CIFAR2_CACHE", "data"))


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """The flag wins, then ``CIFAR2_DATA``; None means 'use the torchvision download'."""
    if data_dir is None and os.environ.get("CIFAR2_DATA"):
        data_dir = os.environ["CIFAR2_DATA"]
    return Path(data_dir) if data_dir is not None else None


def list_image_folder(root: Path) -> dict[str, list[tuple[Path, int]]]:
    """Check the ImageFolder layout and list (file, label) per split, sorted for determinism."""
    if not root.exists():
        raise DataError(f"{root}: data dir does not exist (fix --data-dir or CIFAR2_DATA)")
    if not root.is_dir():
        raise DataError(f"{root}: data dir is not a directory")
    files: dict[str, list[tuple[Path, int]]] = {}
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(
                f"{root}: expected ImageFolder layout {{train,test}}/{{airplane,bird}}/*, "
                f"but {split_dir} is missing"
            )
        found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
        if found != sorted(CLASSES):
            raise DataError(
                f"{split_dir}: expected exactly the class folders {CLASSES}, found {found}"
            )
        files[split] = []
        for label, cls in enumerate(CLASSES):
            # Dotfiles (.DS_Store and friends) are not images anyone put there on purpose.
            paths = sorted(p for p in (split_dir / cls).iterdir() if not p.name.startswith("."))
            if not paths:
                raise DataError(f"{split_dir / cls}: no images in this class folder")
            files[split] += [(p, label) for p in paths]
    return files


def fingerprint_files(root: Path, files: dict[str, list[tuple[Path, int]]]) -> str:
    """sha256 over every file's relative path and bytes: the same images give the same key
    wherever the folder lives, and any edited, added or removed file gives a new one."""
    h = hashlib.sha256()
    for split in SPLITS:
        for path, label in files[split]:
            h.update(f"{path.relative_to(root).as_posix()}\0{label}\0".encode())
            h.update(path.read_bytes())
    return "imagefolder-" + h.hexdigest()[:16]


def decode_image(path: Path) -> np.ndarray:
    """One 32x32 picture as uint8 [3, 32, 32]; anything else is reported, never skipped."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: not a readable image ({e}); remove or replace the file") from None
    if img.size != (32, 32):
        raise DataError(f"{path}: image is {img.size[0]}x{img.size[1]}, CIFAR-2 needs 32x32")
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def decode_folder(files: list[tuple[Path, int]], desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = np.empty((len(files), 3, 32, 32), dtype=np.uint8)
    for i, (path, _) in enumerate(tqdm(files, desc=desc, unit="img", leave=False)):
        images[i] = decode_image(path)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return torch.from_numpy(images), labels


def download_cifar10(cache_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """torchvision's CIFAR-10 (downloaded into cache_dir once), keeping airplane and bird."""
    from torchvision.datasets import CIFAR10

    out = {}
    for split in SPLITS:
        try:
            ds = CIFAR10(str(cache_dir), train=(split == "train"), download=True)
        except (OSError, RuntimeError) as e:  # URLError, socket, ssl, md5 mismatch: no data
            raise DataError(
                f"no CIFAR-2 data: could not download CIFAR-10 into {cache_dir} ({e}). "
                "Fix: connect to the internet, or point --data-dir / CIFAR2_DATA at an "
                "ImageFolder tree {train,test}/{airplane,bird}/*"
            ) from None
        targets = torch.tensor(ds.targets)
        keep = (targets == CIFAR10_LABELS[0]) | (targets == CIFAR10_LABELS[1])
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)[keep].contiguous()
        out[split] = (images, (targets[keep] == CIFAR10_LABELS[1]).long())
    return out


def _cached(cache_file: Path, fingerprint: str, source: str, decode) -> Cifar2:
    if cache_file.is_file():
        try:
            blob = torch.load(cache_file, map_location="cpu", weights_only=True)
            if (isinstance(blob, dict) and blob.get("format") == CACHE_FORMAT
                    and blob.get("fingerprint") == fingerprint):
                return _from_blob(blob, source)
        except (OSError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile):
            # A broken cache is only a cache: decode again and overwrite it.
            print(f"note: {cache_file} is unreadable; decoding the images again", file=sys.stderr)
    splits = decode()
    blob = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "source": source}
    for split in SPLITS:
        blob[f"{split}_x"], blob[f"{split}_y"] = splits[split]
    save_checkpoint(blob, cache_file)
    return _from_blob(blob, source)


def _from_blob(blob: dict, source: str) -> Cifar2:
    return Cifar2(blob["train_x"], blob["train_y"], blob["test_x"], blob["test_y"],
                  blob["fingerprint"], source)


def load_cifar2(data_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> Cifar2:
    """Both splits as uint8 tensors, decoded at most once per distinct source."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = resolve_data_dir(data_dir)
    if root is None:
        def decode():
            return download_cifar10(cache_dir)
        # torchvision checks the archive's md5, so its files are one fixed, known source.
        return _cached(cache_dir / "cifar2-torchvision.pt", "torchvision-cifar10",
                       "torchvision CIFAR-10", decode)
    files = list_image_folder(root)
    fingerprint = fingerprint_files(root, files)

    def decode():
        return {s: decode_folder(files[s], f"decode {s}") for s in SPLITS}
    return _cached(cache_dir / f"cifar2-{fingerprint}.pt", fingerprint, str(root), decode)


def load_split(data_dir: str | Path | None, split: str = "test",
               cache_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as (images uint8 [N,3,32,32] RGB, labels int64 [N]) for the export and service
    checks; ``data_dir=None`` follows the same source order as training."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data = load_cifar2(data_dir, cache_dir)
    return (data.train_x, data.train_y) if split == "train" else (data.test_x, data.test_y)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="ImageFolder tree (default: $CIFAR2_DATA, else download)")
    args = parser.parse_args(argv)
    try:
        data = load_cifar2(args.data_dir)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split in SPLITS:
        y = getattr(data, f"{split}_y")
        print(f"{split}: {len(y)} images, per class {torch.bincount(y, minlength=2).tolist()}")
    print(f"source: {data.source}  fingerprint: {data.fingerprint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
