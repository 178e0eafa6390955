"""The GPU check's outputs: the markdown report (spliced into docs/gpu.md between two marker
lines, so the hand-written text around it stays), the PNG of throughput against batch size, and
the bounds every in-process figure is set against."""

from __future__ import annotations

from pathlib import Path

from bench.gpu.machine import NO_GPU

START, END = "<!-- gpu-check report: start -->", "<!-- gpu-check report: end -->"
IMAGE_BYTES = 3 * 32 * 32
GOALS = [  # the GPU path's goals on an H100
    ("in-process fp32 net, best batch, copies included", ">= 1,000,000 images/s"),
    ("CUDA parity, fp32", "max abs Δlogits <= 1e-4"),
    ("bulk HTTP, CUDA over CPU on the same machine", ">= 5x"),
    ("single-image /predict p99 at c=32 (CUDA)", "<= 5 ms"),
]


def bounds(machine: dict, flops: dict[str, int]) -> dict:
    """images/s ceilings per model: the copy-in bound (measured pinned H2D bytes/s over 3,072
    bytes per image) and the GPU's arithmetic bound per precision (peak FLOP/s over FLOPs per
    image). None without a GPU: a CPU's bound is bench/bench_backends.py's business."""
    copy, peak = machine.get("copy"), machine.get("peak")
    h2d = copy.get("h2d_bytes_per_s") if isinstance(copy, dict) else None
    out = {}
    for model, f in flops.items():
        b = {"pcie": h2d / IMAGE_BYTES if h2d else None, "fp32": None, "fp16": None}
        if isinstance(peak, dict) and "fp32_flops" in peak:
            b["fp32"], b["fp16"] = peak["fp32_flops"] / f, peak["fp16_flops"] / f
        out[model] = b
    return out


def _num(v, fmt="{:,.0f}") -> str:
    return "–" if v is None else fmt.format(v)


def _pct(v, bound) -> str:
    return f"{100 * v / bound:.1f}%" if v and bound else "–"


def machine_md(m: dict) -> list[str]:
    gpu = m["gpu"] if isinstance(m.get("gpu"), dict) else {}
    rows = [("device of this run", m["device"]),
            ("GPU", gpu.get("name") or gpu.get("error") or m.get("gpu")),
            ("driver", gpu.get("driver") or m.get("driver", NO_GPU)),
            ("CUDA the driver supports", m.get("cuda_driver") or NO_GPU),
            ("CUDA runtime ONNX Runtime loads", (f"{m.get('cuda_runtime')} "
             f"({m.get('cuda_runtime_path', '–')})")),
            ("cuDNN it loads", f"{m.get('cudnn') or 'not found'} ({m.get('cudnn_path') or '–'})"),
            ("onnxruntime", (f"{m['onnxruntime']} ({m['onnxruntime_package']}, built for CUDA "
             f"{m.get('onnxruntime_built_for_cuda') or '–'})")),
            ("providers available", ", ".join(m["providers_available"])),
            ("providers that ran the models", ", ".join(m.get("providers_used", [])) or "–"),
            ("CUDA libraries mapped after the run", ", ".join(m.get("loaded_libraries", {}))
             or "none")]
    for name, p in m.get("cuda_packages", {}).items():
        rows.append((f"pip {name} (ORT wants {p['wants']})",
                     f"{p['installed'] or 'not installed'}{'' if p['fits'] else ' — does not fit'}"))
    pcie = m.get("pcie")
    rows.append(("PCIe link (max)", f"gen {pcie['gen']} x{pcie['width']}: "
                 f"{pcie['bytes_per_s'] / 1e9:.1f} GB/s per direction (theoretical)"
                 if isinstance(pcie, dict) else pcie or NO_GPU))
    copy = m.get("copy")
    rows.append(("pinned copies, measured", f"H2D {copy['h2d_bytes_per_s'] / 1e9:.1f} GB/s, "
                 f"D2H {copy['d2h_bytes_per_s'] / 1e9:.1f} GB/s (256 MiB, best of 5)"
                 if isinstance(copy, dict) and "h2d_bytes_per_s" in copy
                 else (copy or {}).get("error", copy) if isinstance(copy, dict) else copy))
    peak = m.get("peak")
    rows.append(("arithmetic peak (derived)", f"FP32 {peak['fp32_flops'] / 1e12:.1f}, FP16 "
                 f"tensor {peak['fp16_flops'] / 1e12:.0f} TFLOP/s: {peak['how']}"
                 if isinstance(peak, dict) and "how" in peak else
                 (peak.get("error") if isinstance(peak, dict) else peak)))
    rows.append(("CPU", f"{m['cpu_cores']} cores; Python {m['python']}"))
    return ["| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)]


def parity_md(parity: dict, device: str) -> list[str]:
    lines = [("| model | run on | inputs | images | max abs Δlogits | max abs Δprobs | "
             "argmax agree | bar | result |"), ("| --- | --- | --- | ---: | ---: | ---: | ---: | "
             "--- | --- |")]
    for model, fmts in parity.items():
        if device != "cuda":
            lines += [f"| {model} | CUDA {p} | | | | | | | {NO_GPU} |" for p in ("fp32", "fp16")]
        for fmt, r in fmts.items():
            bar = "argmax >= 99.9%, Δprobs <= 1e-2" if fmt.endswith("fp16") else "Δlogits <= 1e-4"
            result = "pass" if r.get("passed") else f"FAIL: {r.get('failure', '')}"
            prec = "fp16" if fmt.endswith("fp16") else "fp32"
            lines.append(f"| {model} | {r.get('provider', fmt)} {prec} | "
                         f"{'+'.join(r.get('inputs', []))} | {r.get('images', '–')} | "
                         f"{_num(r.get('max_abs'), '{:.2e}')} | "
                         f"{_num(r.get('max_abs_probs'), '{:.2e}')} | "
                         f"{_num(r.get('argmax_agreement'), '{:.2%}')} | {bar} | {result} |")
    return lines


def sweep_md(rows: list[dict], limits: dict) -> list[str]:
    lines = [("| model | precision | mode | best images/s | at batch | copy-in bound | % | "
             "arithmetic bound | % |"), ("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | "
             "---: |")]
    keys = list(dict.fromkeys((r["model"], r["precision"], r["mode"]) for r in rows))
    for model, prec, mode in keys:
        cells = [r for r in rows if (r["model"], r["precision"], r["mode"]) == (model, prec, mode)]
        done = [r for r in cells if r["status"] == "measured"]
        lim = limits.get(model, {})
        if not done:
            lines.append(f"| {model} | {prec} | {mode} | {cells[0]['status']} | | | | | |")
            continue
        best = max(done, key=lambda r: r["images_per_s"])
        pad = f" (padded to {best['padded_to']})" if best["padded_to"] != best["batch"] else ""
        lines.append(f"| {model} | {prec} | {mode} | {best['images_per_s']:,.0f} | "
                     f"{best['batch']:,}{pad} | {_num(lim.get('pcie'))} | "
                     f"{_pct(best['images_per_s'], lim.get('pcie'))} | {_num(lim.get(prec))} | "
                     f"{_pct(best['images_per_s'], lim.get(prec))} |")
    # Batch sizes that failed or were skipped in a mode whose other sizes ran: said under it.
    broken = [r for r in rows if r["status"].startswith(("failed", "skipped")) and any(
        o["status"] == "measured" for o in rows
        if (o["model"], o["precision"], o["mode"]) == (r["model"], r["precision"], r["mode"]))]
    if broken:
        lines.append("")
        lines += [f"- {r['model']} {r['precision']} {r['mode']} at batch {r['batch']:,}: "
                  f"{r['status'][:200]}" for r in broken]
    return lines


def split_md(rows: list[dict]) -> list[str]:
    """Where a batch's time goes (iobinding rows): our H2D copy, the ORT run, our D2H copy."""
    timed = [r for r in rows if r["status"] == "measured" and r.get("h2d_ms") is not None]
    sizes = sorted({r["batch"] for r in timed})
    picked = {s for s in sizes if s in (1, 64, 1024, 16384, 65536)} or set(sizes)
    lines = ["| model | precision | mode | batch | images/s | H2D ms | compute ms | D2H ms |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in timed:
        if r["batch"] in picked:
            lines.append(f"| {r['model']} | {r['precision']} | {r['mode']} | {r['batch']:,} | "
                         f"{r['images_per_s']:,.0f} | {r['h2d_ms']:.3f} | {r['compute_ms']:.3f} | "
                         f"{r['d2h_ms']:.3f} |")
    return lines if len(lines) > 2 else [f"H2D / compute / D2H split: {NO_GPU}."]


def server_md(server: dict | None) -> str:
    """The service's means for a cell (http_runs.server_means); blanks for older reports."""
    server = server or {}
    return " | ".join(_num(server.get(k), fmt) for k, fmt in (
        ("server_ms", "{:.2f}"), ("queue_ms", "{:.2f}"), ("model_ms", "{:.2f}"),
        ("images_per_call", "{:.1f}")))


def errors_md(cell: dict) -> str:
    """The error count, and which statuses they were: "519 (503: 519)"."""
    bad = {k: v for k, v in (cell.get("statuses") or {}).items() if not 200 <= int(k) < 300}
    if not cell["errors"] or not bad:
        return str(cell["errors"])
    return f"{cell['errors']} ({', '.join(f'{k}: {v}' for k, v in sorted(bad.items()))})"


def http_md(http: dict) -> list[str]:
    lines = [("| device | request | c | req/s | images/s (2xx) | p50 ms | p99 ms | errors | no reply | "
              "server ms | queue ms | model ms | images per call |"),
             "| --- | --- |" + " ---: |" * 11]
    for device, run in http["runs"].items():
        if run["status"] != "measured":
            lines.append(f"| {device} | all | | {run['status'][:300]} | | | | | | | | | |")
            continue
        for c in run["cells"]:
            if c["status"] != "measured":
                lines.append(f"| {device} | {c['request']} | {c['concurrency']} | {c['status']} "
                             "| | | | | | | | | |")
            else:
                lines.append(f"| {device} | {c['request']} | {c['concurrency']} | {c['rps']:,.0f}"
                             f" | {c['images_per_s']:,.0f} | {c['p50_ms']:.1f} | "
                             f"{c['p99_ms']:.1f} | {errors_md(c)} | {c.get('unanswered', 0)} | "
                             f"{server_md(c.get('server'))} |")
    ratios = http.get("cuda_over_cpu") or {}
    lines += ["", "CUDA over CPU, images/s: " + (", ".join(
        f"{k}: {v:.1f}x" for k, v in ratios.items()) or f"{NO_GPU}.")]
    return lines


def goals(result: dict) -> list[tuple[str, str, str]]:
    """The GPU path's goals against this run: met / not met / not measured."""
    if result["device"] != "cuda":
        return [(g, t, NO_GPU) for g, t in GOALS]
    net = result["served"]["convnet"]
    fp32 = [r for r in result["sweep"] if r["model"] == net and r["precision"] == "fp32"
            and r["status"] == "measured" and r["mode"] != "run"]
    best = max((r["images_per_s"] for r in fp32), default=None)
    par = result["parity"].get(net, {}).get("onnxruntime_cuda", {})
    cuda = result["http"]["runs"]["cuda"].get("cells", [])
    bulk = [v for k, v in result["http"]["cuda_over_cpu"].items() if "images c=" in k]
    p99 = next((c["p99_ms"] for c in cuda if c["status"] == "measured" and c["images"] == 1
                and c["concurrency"] == 32 and c["request"].startswith("/predict")), None)

    def verdict(value, ok, text):
        return "not measured (failed)" if value is None else f"{'met' if ok else 'NOT met'}: {text}"

    return [(GOALS[0][0], GOALS[0][1], verdict(best, best and best >= 1e6, f"{best or 0:,.0f}")),
            (GOALS[1][0], GOALS[1][1], verdict(par.get("max_abs"), par.get("passed"),
                                               f"{par.get('max_abs', 0):.2e}")),
            (GOALS[2][0], GOALS[2][1], verdict(min(bulk) if bulk else None,
                                               bulk and min(bulk) >= 5, f"{min(bulk or [0]):.1f}x")),
            (GOALS[3][0], GOALS[3][1], verdict(p99, p99 is not None and p99 <= 5,
                                               f"{p99 or 0:.1f} ms"))]


def markdown(result: dict) -> str:
    device = result["device"]
    env = " ".join(f"{k}={v}" for k, v in (result.get("env") or {}).items())
    out = [START, "", (f"Made by `{env + ' ' if env else ''}{result['command']}` in "
           f"{result['seconds']:.0f} s ({result['date']}); every number is in "
           f"[{result['json_name']}]({result['json_name']}), the plot in "
           f"[{result['png_name']}]({result['png_name']})."), ""]
    if device != "cuda":
        out += [("**This run had no GPU** (`DEVICE=cpu`): every step that needs CUDA says "
                f"\"{NO_GPU}\"; the CPU figures are the same code run with small sizes on the "
                "CPU provider, a check that the script works, not a benchmark."), ""]
    out += ["### Machine", "", *machine_md(result["machine"]), "",
            "### Parity of the carried ONNX files against the eager reference", "",
            *parity_md(result["parity"], device), "",
            "### In-process throughput", "",
            f"Batch sizes {', '.join(f'{b:,}' for b in result['sizes'])}; CUDA-graph buckets "
            f"{', '.join(f'{b:,}' for b in result['buckets'])}; {result['cell_seconds']} s per "
            "cell. The copy-in bound is the measured pinned H2D bandwidth over 3,072 bytes per "
            "image; the arithmetic bound the peak FLOP rate over the FLOPs per image counted "
            "from the ONNX graph (" + ", ".join(f"{m}: {f:,}" for m, f in result["flops"].items())
            + ").", "", *sweep_md(result["sweep"], result["bounds"]), "",
            *split_md(result["sweep"]), "", f"![throughput vs batch]({result['png_name']})", "",
            "### HTTP (the real service, `bentoml serve`)", "", *http_md(result["http"]), "",
            "### Goals (on an H100)", "", "| goal | target | this run |",
            "| --- | --- | --- |", *(f"| {g} | {t} | {v} |" for g, t, v in goals(result)), "", END]
    return "\n".join(out) + "\n"


def write_markdown(path: Path, text: str) -> None:
    """Replace the block between the markers; a file without them gets the block alone."""
    if path.is_file() and START in (old := path.read_text()) and END in old:
        head, rest = old.split(START, 1)
        text = head + text.rstrip("\n") + rest.split(END, 1)[1]
    elif not path.is_file():
        text = "# GPU check\n\n" + text
    path.write_text(text)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(result["flops"])
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = [r for r in result["sweep"] if r["model"] == model and r["status"] == "measured"]
        for key in dict.fromkeys((r["mode"], r["precision"]) for r in rows):
            rs = sorted((r for r in rows if (r["mode"], r["precision"]) == key),
                        key=lambda r: r["batch"])
            ax.plot([r["batch"] for r in rs], [r["images_per_s"] for r in rs], marker="o",
                    markersize=3, label=f"{key[0]} {key[1]}")
        for name, style in (("pcie", ":"), ("fp32", "--"), ("fp16", "-.")):
            bound = result["bounds"][model].get(name)
            if bound:
                ax.axhline(bound, color="black", linestyle=style, linewidth=0.8,
                           label={"pcie": "copy-in bound"}.get(name, f"{name} arithmetic bound"))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("images/s")
        ax.set_title(f"{model} on {result['device']} ({result['machine_name']})", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
