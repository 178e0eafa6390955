"""In-process inference throughput of the exported serving graph, per backend, against the CPU's
arithmetic ceiling.

    python -m bench.bench_backends [--models net dense] [--batches 1 64 512] [--seconds 2]
                                   [--threads N]

Uses runs/NAME.pt when it exists (else an untrained model of the same shape: speed does not
depend on the weights), exports it with the real exporter into a temporary folder (timed), then
measures images/s of eager PyTorch, TorchScript, torch.export and ONNX Runtime (CPU) on the same
uint8 batches, through the same runners the parity gate uses. Prints a markdown table and writes
docs/bench_backends_<threads>t.png and .json. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from export import formats
from export.graph import serving_graph
from export.pipeline import eager, export_checkpoint, load_model
from export.runtime import open_session, run_session
from models.checkpoint import make_checkpoint, save_checkpoint
from models.nets import build, model_args

BACKENDS = ("eager", "torchscript", "torch_export", "onnxruntime_cpu")


def checkpoint_for(name: str, tmp: Path) -> tuple[Path, str]:
    real = Path("runs") / f"{name}.pt"
    if real.is_file():
        return real, str(real)
    args = model_args(name)
    path = save_checkpoint(make_checkpoint(name, args, build(name, **args).eval(),
                                           recipe={"name": "untrained"}), tmp / f"{name}.pt")
    return path, f"untrained (runs/{name}.pt not found)"


def flops_per_image(model: torch.nn.Module) -> int:
    """Counted by torch's FlopCounterMode (2 per multiply-add of conv/linear/matmul); the
    elementwise work (tanh, pooling, normalisation) is not counted and is small next to it."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    return counter.get_total_flops()


def cpu_peak_flops(cores: int) -> tuple[float, str]:
    """cores x GHz x FP32 FLOPs/cycle/core. FLOPs/cycle: 2 FMA pipes x (16 lanes with AVX-512,
    8 with AVX2) x 2 (an FMA is a multiply and an add) = 64 or 32; 8 with neither."""
    flags, mhz = set(), 0.0
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Flags":
                flags = set(value.split())
            elif key.strip() == "CPU max MHz":
                mhz = float(value)
    except OSError:
        pass
    if not mhz:  # a VM often has no max MHz in lscpu; /proc/cpuinfo has the current one
        try:
            mhz = max(float(line.split(":")[1]) for line in
                      Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("cpu MHz"))
        except (OSError, ValueError):
            mhz = 2000.0
    if "avx512f" in flags:
        per_cycle, isa = 64, "AVX-512 FMA"
    elif "avx2" in flags and "fma" in flags:
        per_cycle, isa = 32, "AVX2 FMA"
    else:
        per_cycle, isa = 8, "SSE"
    peak = cores * mhz * 1e6 * per_cycle
    return peak, (f"{cores} cores x {mhz / 1000:.2f} GHz x {per_cycle} FP32 FLOPs/cycle "
                  f"({isa}, 2 FMA pipes) = {peak / 1e9:.0f} GFLOP/s")


def gemm_flops(seconds: float = 1.0, n: int = 1024) -> float:
    """FLOP/s of a large fp32 matrix multiply with torch's current thread count: what this CPU
    really sustains (a VM's /proc/cpuinfo shows the nominal clock, not the boost clock)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    count, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        torch.mm(a, b)
        count += 1
    return count * 2 * n**3 / elapsed


def images_per_second(run, images: np.ndarray, seconds: float) -> float:
    """Median of 5 timed windows after a warm-up, so one noisy window does not decide."""
    run(images)
    windows = []
    for _ in range(5):
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds / 5:
            run(images)
            n += 1
        windows.append(n * len(images) / elapsed)
    return statistics.median(windows)


def bench_model(name: str, batches: list[int], seconds: float, tmp: Path, peak: float,
                threads: int) -> dict:
    ckpt_path, source = checkpoint_for(name, tmp)
    t0 = time.perf_counter()
    out, parity = export_checkpoint(ckpt_path, tmp / name, progress=False)
    export_s = time.perf_counter() - t0
    ckpt, model = load_model(ckpt_path)
    graph = serving_graph(model, ckpt)
    runners, _ = formats.load_runners(out, cuda=False)
    # ORT gets the same thread count as torch (set in main), so the backends are comparable.
    sess, _ = open_session(out / formats.FILES["onnx"], "cpu", threads=threads)
    runners["onnxruntime_cpu"] = lambda x: run_session(sess, x)
    runners["eager"] = lambda x: eager(graph, x)
    flops = flops_per_image(model)
    rows = []
    rng = np.random.default_rng(0)
    for batch in batches:
        images = rng.integers(0, 256, (batch, 3, 32, 32), dtype=np.uint8)
        for backend in tqdm(BACKENDS, desc=f"{name} batch {batch}", leave=False):
            ips = images_per_second(runners[backend], images, seconds)
            rows.append({"model": name, "backend": backend, "batch": batch,
                         "images_per_s": ips, "ceiling_fraction": ips * flops / peak})
    return {"model": name, "checkpoint": source, "params": ckpt.get("params"),
            "flops_per_image": flops, "ceiling_images_per_s": peak / flops,
            "export_seconds": export_s, "export_steps": parity["export_seconds"],
            "parity_passed": parity["passed"], "rows": rows}


def table(results: list[dict]) -> str:
    lines = ["| model | backend | batch | images/s | % of ceiling |",
             "| --- | --- | ---: | ---: | ---: |"]
    for r in results:
        for row in r["rows"]:
            lines.append(f"| {row['model']} | {row['backend']} | {row['batch']} | "
                         f"{row['images_per_s']:,.0f} | {row['ceiling_fraction']:.2%} |")
    lines += ["", "| model | FLOPs/image | ceiling images/s | export time (s) |",
              "| --- | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r['model']} | {r['flops_per_image']:,} | "
                     f"{r['ceiling_images_per_s']:,.0f} | {r['export_seconds']:.1f} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, r in zip(axes[0], results):
        batches = sorted({row["batch"] for row in r["rows"]})
        width = 0.8 / len(BACKENDS)
        for i, backend in enumerate(BACKENDS):
            ys = [next(row["images_per_s"] for row in r["rows"]
                       if row["backend"] == backend and row["batch"] == b) for b in batches]
            ax.bar(np.arange(len(batches)) + i * width, ys, width, label=backend)
        ax.set_xticks(np.arange(len(batches)) + width * (len(BACKENDS) - 1) / 2)
        ax.set_xticklabels([f"batch {b}" for b in batches])
        ax.axhline(r["ceiling_images_per_s"], color="black", linestyle="--",
                   label="FP32 ceiling (lscpu)")
        ax.set_yscale("log")
        ax.set_ylabel("images/s (log)")
        ax.set_title(f"{r['model']}: {r['flops_per_image'] / 1e6:.2f} MFLOP/image")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["net", "dense"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64, 512])
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per cell")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads for torch and ONNX Runtime (default: all cores); the ceiling "
                        "counts this many cores")
    p.add_argument("--out", type=Path, default=Path("docs"))
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    peak, how = cpu_peak_flops(args.threads)
    gemm = gemm_flops()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_model(m, args.batches, args.seconds, Path(tmp), peak, args.threads)
                   for m in args.models]
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; ceiling "
          f"{how}; torch {torch.__version__}, {args.threads} threads (torch and ORT); "
          f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"a 1024x1024 fp32 matmul (torch) sustains {gemm / 1e9:.0f} GFLOP/s = "
          f"{gemm / peak:.0%} of that ceiling")
    for r in results:
        print(f"{r['model']}: checkpoint {r['checkpoint']}, parity passed: {r['parity_passed']}, "
              f"export steps (s): {r['export_steps']}")
    print()
    print(table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bench_backends_{args.threads}t"
    plot(results, stem.with_suffix(".png"))
    stem.with_suffix(".json").write_text(json.dumps(
        {"cpu_peak": how, "gemm_flops": gemm, "threads": args.threads, "results": results},
        indent=2) + "\n")
    print(f"\nwrote {stem}.png and {stem}.json")


if __name__ == "__main__":
    main()
