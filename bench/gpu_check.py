"""The GPU path measured in one command: machine, parity on CUDA, in-process sweep, HTTP on CUDA.

    make gpu-check                    # on the GPU machine: installs the carried wheelhouse, then
                                      # python -m bench.gpu_check --device cuda --out docs
    make gpu-check DEVICE=cpu         # anywhere: every step that needs no CUDA, small sizes
    python -m bench.gpu_check --device cpu --bundle gpu-bundle --out gpu-check-cpu

Reads the bundle made on the export machine (`make gpu-bundle`: the served models' ONNX files,
fp32 and fp16, with the eager reference; bench/gpu/pack.py) and needs neither torch nor data.
Steps, each in its own module under bench/gpu/: machine.py (GPU, driver, the CUDA and cuDNN ORT
loads, PCIe and copy bandwidth, peaks), cuda_parity.py, sweep.py (batch 1 to 65,536: session.run,
IO binding with pinned buffers, CUDA graphs on padded buckets, TensorRT), http_runs.py (the real
service on CIFAR2_DEVICE=cuda, then cpu). A step that fails is reported as failed and the run
goes on. Writes <out>/gpu.md (the report between its marker lines), <out>/gpu_check.json (every
number) and <out>/gpu_check.png. On an H100 the whole command takes a few minutes.
Exit codes: 0 report written, 2 no bundle / no usable GPU for --device cuda.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.gpu import report
from bench.gpu.cuda_parity import check_model
from bench.gpu.cudart import loaded_libraries
from bench.gpu.http_runs import http_check
from bench.gpu.machine import describe, short_path
from bench.gpu.sweep import sweep
from export.runtime import CUDA, cuda_driver_present

DEFAULTS = {  # per device: the GPU's full sweep; the CPU's small one (a test runs it)
    "cuda": {"sizes": [2**i for i in range(17)], "buckets": [4**i for i in range(9)],
             "seconds": 0.25, "concurrency": [32, 64], "bulk": [1024, 4096],
             "bulk_concurrency": 4, "http_seconds": 5.0},
    "cpu": {"sizes": [1, 16, 256], "buckets": [1, 16, 256], "seconds": 0.1,
            "concurrency": [8], "bulk": [256], "bulk_concurrency": 2, "http_seconds": 1.0,
            "workers": 1},
}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--bundle", type=Path, default=Path("gpu-bundle"))
    p.add_argument("--out", type=Path, help="where gpu.md, gpu_check.json and .png go "
                                            "(default: docs for cuda, gpu-check-cpu for cpu)")
    p.add_argument("--sizes", type=int, nargs="+", help="batch sizes of the sweep")
    p.add_argument("--buckets", type=int, nargs="+", help="CUDA-graph bucket sizes")
    p.add_argument("--seconds", type=float, help="timed seconds per sweep cell")
    p.add_argument("--http-seconds", type=float, help="seconds of load per HTTP cell")
    p.add_argument("--concurrency", type=int, nargs="+",
                   help="connections of the single-image HTTP cells (default 32 64 on CUDA)")
    p.add_argument("--workers", type=int, help="CIFAR2_WORKERS of the served runs "
                                               "(default: the service's)")
    p.add_argument("--no-http", action="store_true", help="skip the HTTP runs")
    p.add_argument("--from-json", type=Path, metavar="JSON",
                   help="measure nothing: write the report and the PNG again from a "
                        "gpu_check.json (e.g. where matplotlib is, after a GPU run without it)")
    return p.parse_args(argv)


def command_line(argv: list[str]) -> str:
    """This command as the report shows it: an absolute path by its last part, so that the
    report names no folder of the machine it ran on."""
    return " ".join(["python -m bench.gpu_check",
                     *(Path(a).name if a.startswith("/") else a for a in argv)])


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    report.write_markdown(out / "gpu.md", report.markdown(result))
    try:
        report.plot(result, out / "gpu_check.png")
    except Exception as e:  # noqa: BLE001 - matplotlib is not in the wheelhouse; the JSON has it all
        print(f"gpu_check.png not drawn ({type(e).__name__}: {e}); the points are in "
              "gpu_check.json: `python -m bench.gpu_check --from-json` draws it elsewhere")


def preflight(args) -> str | None:
    """Why this run cannot start (None = it can)."""
    if not (args.bundle / "bundle.json").is_file():
        return (f"no bundle at {args.bundle}/: make it where the models were exported with "
                "`make gpu-bundle`, then carry it here")
    if args.device == "cuda" and (CUDA not in ort.get_available_providers()
                                  or not cuda_driver_present()):
        return ("no usable GPU here (no NVIDIA driver, or onnxruntime without CUDA: "
                f"{ort.get_available_providers()}); `make gpu-check DEVICE=cpu` runs the rest")
    return None


def step(name: str, seconds: dict, fn, *a, **kw):
    print(f"== {name}", flush=True)
    t0 = time.perf_counter()
    try:
        return fn(*a, **kw)
    except Exception as e:  # noqa: BLE001 - one failing step must not cost the others
        print(f"   {name} failed: {type(e).__name__}: {e}", flush=True)
        return {"error": f"{type(e).__name__}: {str(e)[:500]}"}
    finally:
        seconds[name] = round(time.perf_counter() - t0, 1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        result["bounds"] = report.bounds(result["machine"], result["flops"])
        result["goals"] = report.goals(result)
        write(result, args.out or args.from_json.parent)  # derived fields only are recomputed
        print(f"wrote {args.out or args.from_json.parent}/gpu.md, gpu_check.json, .png again "
              f"from {args.from_json}")
        return 0
    why = preflight(args)
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    d = DEFAULTS[args.device]
    sizes, buckets = args.sizes or d["sizes"], args.buckets or d["buckets"]
    out = args.out or Path("docs" if args.device == "cuda" else "gpu-check-cpu")
    bundle = json.loads((args.bundle / "bundle.json").read_text())
    models = list(bundle["models"])
    test = args.bundle / "test_images.npy"
    test_images = np.load(test, allow_pickle=False) if test.is_file() else None
    t0, seconds = time.perf_counter(), {}

    machine = step("machine", seconds, describe, args.device)
    parity = {m: step(f"parity {m}", seconds, check_model, args.bundle / m,
                      json.loads((args.bundle / m / "parity.json").read_text()), test_images,
                      args.device) for m in models}
    rows = step("sweep", seconds, sweep, args.bundle, models, args.device, sizes, buckets,
                args.seconds or d["seconds"])
    rows = rows if isinstance(rows, list) else [{"model": m, "precision": "fp32", "mode": "all",
                                                 "batch": 0, "status": f"failed: {rows['error']}"}
                                                for m in models]
    http = {"runs": {}, "cuda_over_cpu": {}} if args.no_http else step(
        "http", seconds, http_check, args.bundle, args.device,
        args.concurrency or d["concurrency"], d["bulk"],
        d["bulk_concurrency"], args.http_seconds or d["http_seconds"],
        args.workers or d.get("workers"))
    if "error" in http:
        http = {"runs": {"all": {"status": f"failed: {http['error']}"}}, "cuda_over_cpu": {}}
    machine["loaded_libraries"] = {k: short_path(v) for k, v in loaded_libraries().items()}
    machine["providers_used"] = sorted({r["provider"] for r in rows if r.get("provider")})
    flops = {m: bundle["models"][m]["graph"]["flops_per_image"] for m in models}
    gpu = machine.get("gpu")
    result = {
        "device": args.device, "command": command_line(sys.argv[1:]),
        # the service's settings that differ from its defaults (inherited by the HTTP runs)
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("CIFAR2_")},
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine_name": gpu.get("name", "GPU") if isinstance(gpu, dict) else "no GPU",
        "served": bundle["served"], "test_images": bundle.get("test_images"),
        "sizes": sizes, "buckets": buckets, "cell_seconds": args.seconds or d["seconds"],
        "flops": flops, "graph": {m: bundle["models"][m]["graph"] for m in models},
        "bounds": report.bounds(machine, flops),
        "machine": machine, "parity": parity, "sweep": rows, "http": http,
        "json_name": "gpu_check.json", "png_name": "gpu_check.png"}
    result["seconds"] = time.perf_counter() - t0
    result["step_seconds"] = seconds
    result["goals"] = report.goals(result)
    write(result, out)
    print(f"wrote {out}/gpu.md, gpu_check.json, gpu_check.png in {result['seconds']:.0f} s "
          f"({', '.join(f'{k} {v} s' for k, v in seconds.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
