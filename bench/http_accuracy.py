"""Accuracy over HTTP: post every real test image to /classify, for both served models.

    python -m bench.http_accuracy --data-dir DIR           # or set CIFAR2_DATA
    python -m bench.http_accuracy --url http://host:3000 --limit 200

Each image goes as its own request (one file, sequential), so the latency column is what one
client sees per image. Prints accuracy, params and latency side by side, and the accuracy the
model store recorded at training time (`python -m models.evaluate` re-evaluates checkpoints).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import httpx
from tqdm import tqdm

EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


def test_images(data_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    root = data_dir / "test"
    if not root.is_dir():
        sys.exit(f"error: {root} does not exist; --data-dir must hold test/<class>/ folders")
    items = [(p, label) for label, cls in enumerate(classes)
             for p in sorted((root / cls).glob("*")) if p.suffix.lower() in EXTENSIONS]
    if not items:
        sys.exit(f"error: no images under {root}/{{{','.join(classes)}}}")
    return items


def run(client: httpx.Client, model: str, items: list[tuple[Path, int]], classes) -> dict:
    correct, ms = 0, []
    for path, label in tqdm(items, desc=model, unit="img"):
        data = path.read_bytes()
        t0 = time.perf_counter()
        r = client.post("/classify", files=[("images", (path.name, data))],
                        data={"model": model})
        ms.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
        correct += r.json()["predictions"][0]["label"] == classes[label]
    ms.sort()
    return {"accuracy": correct / len(items), "n": len(items), "mean_ms": statistics.mean(ms),
            "p50_ms": ms[len(ms) // 2], "p99_ms": ms[int(len(ms) * 0.99) - 1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://localhost:3000")
    p.add_argument("--data-dir", default=os.environ.get("CIFAR2_DATA"))
    p.add_argument("--limit", type=int, default=0, help="first N images per class (0 = all)")
    args = p.parse_args()
    if not args.data_dir:
        sys.exit("error: give --data-dir or set CIFAR2_DATA to the CIFAR-2 ImageFolder tree")
    with httpx.Client(base_url=args.url, timeout=60) as client:
        try:
            info = client.get("/info").json()
        except httpx.TransportError as e:
            sys.exit(f"error: cannot reach {args.url} ({e}); start it with `bentoml serve`")
        classes = info["models"]["convnet"]["classes"]
        items = test_images(Path(args.data_dir), classes)
        if args.limit:
            items = [it for label in range(len(classes))
                     for it in [x for x in items if x[1] == label][:args.limit]]
        rows = {m: run(client, m, items, classes) for m in ("convnet", "dense")}
    print("\n| model | tag | params | accuracy over HTTP | stored val_acc | images | "
          "mean ms/image | p50 ms | p99 ms |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m, r in rows.items():
        card = info["models"][m]
        stored = card.get("val_acc")
        stored = f"{stored:.4f}" if isinstance(stored, (int, float)) else "-"
        print(f"| {m} | {card['tag']} | {card['params']:,} | {r['accuracy']:.4f} | {stored} | "
              f"{r['n']} | {r['mean_ms']:.2f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    print(f"\nprovider: {info['models']['convnet']['provider']}; server: {args.url}")


if __name__ == "__main__":
    main()
