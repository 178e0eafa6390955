"""Pack the two served models into a small bundle to carry to a GPU machine (no torch there).

    make gpu-bundle                    # exports runs/net.pt and runs/dense.pt with --fp16, then:
    python -m bench.gpu.pack artifacts/net artifacts/dense [--out gpu-bundle] [--data-dir DIR]

Run where the project's .venv (torch) is. Each artifact folder must have passed the parity gate,
be unchanged since (model.json's sha256) and hold model.fp16.onnx (`python -m export RUN.pt
--fp16`). The bundle holds, per model, only what the GPU check and the service read:

    gpu-bundle/bundle.json            models (served as convnet, dense), FLOPs/image from the ONNX
                                      graph, store labels + metadata, the test images' sha256
    gpu-bundle/<model>/               model.onnx, model.fp16.onnx, parity.json (the eager
                                      reference), model.json
    gpu-bundle/test_images.npy        the real test images, when the export used them and
                                      --data-dir / CIFAR2_DATA has them here (checked by sha256)

Exit codes: 0 packed, 2 a folder that may not be carried (the message says why and the fix).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from bench.gpu.flops import count
from export import card
from export.formats import FILES, FP16_FILE, ArtifactError
from export.inputs import images_sha256, real_test_batch
from export.register import RegisterError, _checked, store_metadata

CARRIED = (FILES["onnx"], FP16_FILE, card.PARITY, card.CARD)
SERVED = ("convnet", "dense")  # the service's two model slots, in the order given


def pack_model(folder: Path, out: Path) -> tuple[str, dict, dict]:
    """Copy one checked artifact folder's carried files into out/<model>; return (model name,
    its bundle.json entry, its parity.json)."""
    try:
        parity, model_card = _checked(folder)  # the register step's own refusal rules
    except RegisterError as e:
        raise ArtifactError(str(e).replace("refusing to register", "not packing")) from None
    if not (folder / FP16_FILE).is_file() or FP16_FILE not in model_card["files"]:
        raise ArtifactError(f"{folder}: no {FP16_FILE}; export again with "
                            f"`python -m export runs/{model_card['model']}.pt --fp16`")
    name = model_card["model"]
    (out / name).mkdir(parents=True)
    for file in CARRIED:
        shutil.copy2(folder / file, out / name / file)
    labels, metadata = store_metadata(parity, model_card)
    # The store entry made from the bundle holds only the carried files.
    metadata["files"] = {f: d for f, d in metadata["files"].items() if f in CARRIED}
    flops = count(folder / FILES["onnx"])
    entry = {"folder": name, "params": model_card.get("params"), "graph": flops,
             "files": {f: model_card["files"].get(f) for f in CARRIED if f != card.CARD},
             "store": {"name": f"cifar2-{name}", "labels": labels, "metadata": metadata}}
    return name, entry, parity


def pack(folders: list[Path], out: Path, data_dir: str | None) -> dict:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    bundle: dict = {"served": {}, "models": {}, "test_images": None}
    tested = set()
    for slot, folder in zip(SERVED, folders):
        name, entry, parity = pack_model(folder, out)
        bundle["served"][slot] = name
        bundle["models"][name] = entry
        described = parity["inputs"].get("test_images", {})
        if described.get("used") and "test" in parity["reference"]:
            tested.add(described["sha256"])
    if len(tested) > 1:
        raise ArtifactError("the models were exported with different test images; export "
                            "both with the same --data-dir / CIFAR2_DATA")
    if tested:
        batch, described = real_test_batch(data_dir)
        if batch is None:
            bundle["test_images"] = {"carried": False, "why": "exported with the real test "
                                     "images, but --data-dir / CIFAR2_DATA is not set here"}
        elif images_sha256([batch]) != next(iter(tested)):
            raise ArtifactError(f"{data_dir or 'CIFAR2_DATA'}: its test images are not the ones "
                                "the models were exported with; export again or fix the path")
        else:
            np.save(out / "test_images.npy", batch.images)
            bundle["test_images"] = {"carried": True, "images": len(batch.images),
                                     "sha256": described["sha256"]}
    else:
        bundle["test_images"] = {"carried": False, "why": "the models were exported without "
                                 "real test images (export with --data-dir or CIFAR2_DATA)"}
    (out / "bundle.json").write_text(json.dumps(bundle, indent=1) + "\n")
    return bundle


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="*", type=Path,
                   default=[Path("artifacts/net"), Path("artifacts/dense")],
                   help="the convnet's artifact folder, then the dense baseline's")
    p.add_argument("--out", type=Path, default=Path("gpu-bundle"))
    p.add_argument("--data-dir", help="ImageFolder tree of the real images (default: "
                                      "$CIFAR2_DATA)")
    args = p.parse_args(argv)
    if len(args.folders) != 2:
        print("error: give two artifact folders: the convnet's, then the dense baseline's",
              file=sys.stderr)
        return 2
    try:
        bundle = pack(args.folders, args.out, args.data_dir)
    except (ArtifactError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{args.out}: {', '.join(bundle['models'])} ({size / 2**20:.1f} MiB); real test "
          f"images: {bundle['test_images'].get('images') or bundle['test_images']['why']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
