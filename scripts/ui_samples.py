"""Write the web page's built-in sample set: real CIFAR-2 test images, as small PNG files.

    python scripts/ui_samples.py --data-dir $CIFAR2_DATA      # -> service/ui/samples/

Takes the first N test images of each class (sorted file names, no picking), interleaved
airplane/bird, and stores each as a lossless PNG of the decoded pixels: the service then sees
exactly the pixels it would see from the original file, and the page's 32x32 view is exact.
samples.json lists file, true label and source file. Licence and source: samples/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from PIL import Image

CLASSES = ("airplane", "bird")
OUT = Path(__file__).resolve().parents[1] / "service" / "ui" / "samples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("CIFAR2_DATA"),
                        help="ImageFolder tree with test/{airplane,bird}/ (default: $CIFAR2_DATA)")
    parser.add_argument("--per-class", type=int, default=16)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not args.data_dir or not (Path(args.data_dir) / "test").is_dir():
        parser.exit(2, "error: --data-dir (or CIFAR2_DATA) must be the CIFAR-2 ImageFolder tree "
                       "with test/airplane and test/bird\n")
    test = Path(args.data_dir) / "test"
    picked = {c: sorted(p for p in (test / c).iterdir() if p.is_file())[:args.per_class]
              for c in CLASSES}
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = []
    for i in range(args.per_class):
        for label in CLASSES:
            src = picked[label][i]
            with Image.open(src) as im:
                pixels = im.convert("RGB")
            if pixels.size != (32, 32):
                parser.exit(2, f"error: {src} is {pixels.size}, not 32x32: not CIFAR-2 images\n")
            name = f"{label}-{src.stem}.png"
            pixels.save(args.out / name, optimize=True)
            manifest.append({"file": name, "label": label,
                             "source": f"test/{label}/{src.name}"})
    (args.out / "samples.json").write_text(json.dumps(
        {"classes": list(CLASSES), "samples": manifest}, indent=1) + "\n")
    print(f"{len(manifest)} images -> {args.out}")


if __name__ == "__main__":
    main()
