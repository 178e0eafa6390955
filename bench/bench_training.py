"""Training and inference throughput on the CPU (images/s) for net, dense and net_fast.

    python -m bench.bench_training [--models net dense net_fast] [--seconds 5] [--threads N]

Random inputs (throughput does not depend on the pixels). Training: one SGD step per batch at the
recipe's batch size (book: 64, fast: 256), channels_last as in models.train. Inference: eval
mode, no_grad, batch 256 and batch 1. Prints a markdown table. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.nn.functional as F

from models.nets import build, count_params
from models.recipes import RECIPES


def rate(step, batch: int, seconds: float) -> float:
    """images/s of ``step`` after two warm-up calls, over at least ``seconds``."""
    step(), step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n * batch / (time.perf_counter() - t0)


def bench(name: str, batch: int, seconds: float) -> dict:
    torch.manual_seed(0)
    model = build(name).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,))

    def train_step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    train = rate(train_step, batch, seconds)
    model.eval()
    xb, x1 = torch.randn(256, 3, 32, 32), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        infer = rate(lambda: model(xb), 256, seconds)
        infer1 = rate(lambda: model(x1), 1, seconds)
    return {"model": name, "params": count_params(model), "batch": batch, "train": train,
            "infer": infer, "infer1": infer1}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["net", "dense", "net_fast"])
    p.add_argument("--seconds", type=float, default=5.0, help="measuring time per number")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    # The load average says how busy the (possibly shared) CPU was while measuring.
    print(f"torch {torch.__version__}, {platform.machine()} CPU, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}\n")
    print("| model | params | train batch | train img/s | infer img/s (batch 256) | infer img/s (batch 1) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in a.models:
        # The batch size each model is trained with: net_fast by the fast recipe, the rest by the book.
        batch = RECIPES["fast" if name == "net_fast" else "book"]["batch_size"]
        r = bench(name, batch, a.seconds)
        print(f"| {r['model']} | {r['params']:,} | {r['batch']} | {r['train']:,.0f} | "
              f"{r['infer']:,.0f} | {r['infer1']:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
