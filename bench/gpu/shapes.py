"""What a change of batch shape between calls costs one ORT session, and what a session per
shape saves: the cause of the served convnet's slow single-image requests on CUDA.

    PYTHONPATH=.gpu-site python3 -m bench.gpu.shapes [--bundle gpu-bundle] [--out docs]
    python -m bench.gpu.shapes --device cpu --out DIR     # the same steps anywhere

The served session (service/runtime.py open_serving_session, 1 ORT thread) runs 400 calls:
always batch 16; 16 and 8 in turn; a random padding bucket (1..32) each call, as adaptive
batching under load makes them. Then one session per bucket with the same random sequence,
and, on CUDA, one session with cuDNN's DEFAULT algorithm (no search). Every shape is warmed
twice first, so no cell counts a first call. ORT's CUDA convolution keeps its state for the
shape of its previous call only (onnxruntime/core/providers/cuda/nn/conv.h, last_x_dims), so a
shape other than the last one is planned again. Prints a table and writes gpu_shapes.json to
--out. Exit code 2 when the bundle is missing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from export.runtime import open_session, run_session
from service.runtime import open_serving_session, serving_session_options

SHAPES = [1, 2, 4, 8, 16, 32]
CALLS = 400


def timed(sessions: dict, shapes: list[int], x: dict) -> dict:
    t = []
    for n in shapes:
        s = sessions[n]
        t0 = time.perf_counter()
        run_session(s, x[n])
        t.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": round(statistics.median(t), 3), "mean_ms": round(statistics.mean(t), 3),
            "p90_ms": round(float(np.percentile(t, 90)), 3)}


def warm(sessions: dict, x: dict) -> None:
    for n in SHAPES:
        run_session(sessions[n], x[n])
        run_session(sessions[n], x[n])


def measure(path: Path, device: str) -> dict:
    rng = np.random.default_rng(0)
    x = {n: rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8) for n in SHAPES}
    seq = [int(s) for s in rng.choice(SHAPES, CALLS)]
    out = {}
    one, _ = open_serving_session(path, device, 1)
    shared = {n: one for n in SHAPES}
    warm(shared, x)
    out["one session, batch 16 every call"] = timed(shared, [16] * CALLS, x)
    out["one session, 16 and 8 alternating"] = timed(shared, [16, 8] * (CALLS // 2), x)
    out["one session, random bucket each call"] = timed(shared, seq, x)
    t0 = time.perf_counter()
    per = {n: open_serving_session(path, device, 1)[0] for n in SHAPES}
    out["open 6 sessions, s"] = round(time.perf_counter() - t0, 2)
    warm(per, x)
    out["session per bucket, random bucket each call"] = timed(per, seq, x)
    if device == "cuda":
        d, _ = open_session(path, device, 1, {"cudnn_conv_algo_search": "DEFAULT"},
                            serving_session_options())
        default_algo = {n: d for n in SHAPES}
        warm(default_algo, x)
        out["one session, cudnn DEFAULT algo, random bucket"] = timed(default_algo, seq, x)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=Path("gpu-bundle"))
    p.add_argument("--out", type=Path, default=Path("docs"))
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = p.parse_args(argv)
    path = args.bundle / "net" / "model.onnx"
    if not path.is_file():
        print(f"error: {path} is missing: carry the bundle made by `make gpu-bundle`",
              file=sys.stderr)
        return 2
    rows = measure(path, args.device)
    print(f"| {args.device}, {CALLS} calls | median ms | mean ms | p90 ms |\n"
          "| --- | ---: | ---: | ---: |")
    for name, r in rows.items():
        if isinstance(r, dict):
            print(f"| {name} | {r['median_ms']:.3f} | {r['mean_ms']:.3f} | {r['p90_ms']:.3f} |")
    print(f"\nopening the six sessions took {rows['open 6 sessions, s']} s")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_shapes.json").write_text(json.dumps(
        {"model": str(path), "device": args.device, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out / 'gpu_shapes.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
