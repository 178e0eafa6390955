"""The parity results of artifact folders as one markdown table (what docs/export.md shows).

    python -m export.report artifacts/net artifacts/dense
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export import card
from export.formats import ArtifactError


def rows(folder: Path) -> list[str]:
    parity = card.read_json(folder / card.PARITY)
    model_card = card.read_json(folder / card.CARD)
    test = parity["inputs"].get("test_images", {})
    n_random = sum(parity["inputs"]["random"]["batch_sizes"])
    images = f"{test['images']} test + {n_random} random" if test.get("used") else f"{n_random} random"
    acc = model_card.get("metrics", {}).get("val_acc")
    out = []
    for fmt, r in parity["formats"].items():
        out.append(f"| {model_card['model']} | {acc if acc is None else f'{acc:.4f}'} | {fmt} | "
                   f"{r.get('provider', '-')} | {images} | {r['max_abs']:.2e} | "
                   f"{r['p99_abs']:.2e} | {r['max_rel']:.2e} | {r['p99_rel']:.2e} | "
                   f"{r['argmax_agreement']:.2%} | {'pass' if r['passed'] else 'FAIL'} |")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path)
    args = p.parse_args(argv)
    print("| model | val acc | format | provider | inputs | max abs Δ | p99 abs Δ | max rel Δ "
          "| p99 rel Δ | argmax agree | gate |")
    print("| --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    try:
        for folder in args.folders:
            print("\n".join(rows(folder)))
    except ArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
