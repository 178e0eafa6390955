"""Checkpoint -> artifact folder: the serving graph in three formats, checked by the parity gate.

``export_checkpoint`` is what ``python -m export`` runs; the tests and the benchmark call it too.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from export import card, formats
from export.graph import serving_graph
from export.inputs import parity_batches
from export.parity import (
    FP16_TOLERANCES,
    RANDOM_BATCH_SIZES,
    TOLERANCES,
    check_format,
    check_formats,
    failures_of,
    pack_reference,
)
from export.runtime import CUDA, RuntimeUnavailable, open_session, run_session
from models.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, sha256_of


def load_model(ckpt_path: Path):
    """The checkpoint (weights_only) and its eval-mode model. Raises CheckpointError, or
    UnknownModelError for a model name the zoo does not have."""
    ckpt = load_checkpoint(ckpt_path)
    try:
        model = model_from_checkpoint(ckpt)
    except (RuntimeError, TypeError) as e:  # state_dict or constructor args do not fit the model
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"{ckpt_path}: weights do not fit model {ckpt['model']!r} "
                              f"({first})") from None
    return ckpt, model


def eager(graph: torch.nn.Module, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference: eager PyTorch, float32, CPU, on the same uint8 images."""
    return formats.torch_runner(graph)(images)


def write_fp16(model, ckpt, out_dir: Path) -> Path:
    """The fp16 ONNX variant of the serving graph (uint8 in, float32 outputs)."""
    graph16 = serving_graph(model, ckpt, dtype=torch.float16)
    return formats.write_onnx(graph16, out_dir / formats.FP16_FILE,
                              formats.export_program(graph16))


def fp16_check(model, ckpt, out_dir: Path, batches, references, device: str = "cuda") -> dict:
    """The fp16 ONNX variant, judged by decisions and probabilities on the real test images (the
    random batches when there is no data). The exporter runs it only where ONNX Runtime really
    runs on CUDA; the tests run the same code on the CPU provider."""
    write_fp16(model, ckpt, out_dir)
    sess, provider = open_session(out_dir / formats.FP16_FILE, device=device)
    real = [i for i, b in enumerate(batches) if b.name == "test"] or range(len(batches))
    result = check_format(f"onnxruntime_{device}_fp16", lambda x: run_session(sess, x),
                          [batches[i] for i in real], [references[i] for i in real], fp16=True)
    return {**result, "provider": provider}


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path | None = None,
                      data_dir: str | Path | None = None, progress: bool = True,
                      batch_sizes: tuple[int, ...] = RANDOM_BATCH_SIZES,
                      fp16: bool = False) -> tuple[Path, dict]:
    """Export, check and describe one checkpoint into ``out_dir`` (default
    ``artifacts/<model>``); return the folder and parity.json's content.

    The fp16 variant is written and checked where ONNX Runtime runs on CUDA; ``fp16=True``
    writes it on a CPU machine too, unchecked, to be carried to a GPU (bench/gpu_check.py checks
    it there against the eager reference kept in parity.json).

    parity.json and model.json are written whether or not the gate passes, so a failure can be
    inspected; ``register`` refuses anything whose parity.json does not say ``passed``.
    ``batch_sizes`` (the random batches) is for the test suite; the CLI always runs the full set.
    """
    ckpt_path = Path(ckpt_path)
    ckpt, model = load_model(ckpt_path)
    out_dir = Path(out_dir) if out_dir is not None else Path("artifacts") / ckpt["model"]
    graph = serving_graph(model, ckpt)

    seconds: dict[str, float] = {}
    steps = tqdm(total=5, desc=f"export {ckpt['model']}", unit="step", disable=not progress,
                 leave=False)

    @contextlib.contextmanager
    def step(name: str):
        t = time.perf_counter()
        try:
            yield
        except BaseException:
            steps.close()  # clear the bar, so the error message stands alone
            raise
        seconds[name] = round(time.perf_counter() - t, 3)
        steps.update()

    with step("inputs"):  # first, so that a bad --data-dir fails before anything is written
        batches, inputs = parity_batches(data_dir, batch_sizes)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A stale passing parity.json next to new files would let a failed export be registered.
    (out_dir / card.PARITY).unlink(missing_ok=True)
    (out_dir / formats.FP16_FILE).unlink(missing_ok=True)
    with step("torch_export"):
        program = formats.export_program(graph)
        formats.write_pt2(program, out_dir / formats.FILES["torch_export"])
    with step("onnx"):
        formats.write_onnx(graph, out_dir / formats.FILES["onnx"], program)
    with step("torchscript"):
        formats.write_torchscript(graph, out_dir / formats.FILES["torchscript"])
    with step("parity"):
        references = [eager(graph, b.images) for b in batches]
        runners, runtime = formats.load_runners(out_dir)
        results = check_formats(runners, runtime["providers"], batches, references)
        if runtime["providers"].get("onnxruntime_cuda") == CUDA:
            torch.backends.cuda.matmul.allow_tf32 = False  # no TF32 near a GPU comparison
            torch.backends.cudnn.allow_tf32 = False
            try:
                results["onnxruntime_cuda_fp16"] = fp16_check(model, ckpt, out_dir, batches,
                                                               references)
            except RuntimeUnavailable as e:
                runtime["skipped"]["onnxruntime_cuda_fp16"] = str(e)
        elif fp16:
            write_fp16(model, ckpt, out_dir)
            runtime["skipped"]["onnxruntime_cuda_fp16"] = (
                f"{formats.FP16_FILE} written, not checked: needs ONNX Runtime on CUDA "
                "(python -m bench.gpu_check checks it on a GPU)")
        else:
            runtime["skipped"]["onnxruntime_cuda_fp16"] = "needs ONNX Runtime on CUDA"
    steps.close()

    n_random = sum(1 for b in batches if b.name == "random")
    # The eager logits of every parity input, so that a machine without torch or the checkpoint
    # (verify, a GPU run) can re-run the gate: the random batches, and the real test images.
    reference = {"random": pack_reference(references[:n_random])}
    if len(batches) > n_random:
        reference["test"] = pack_reference(references[n_random:])
    parity = {
        "passed": all(r["passed"] for r in results.values()),
        "model": ckpt["model"],
        "formats": results,
        "skipped": runtime["skipped"],
        "tolerances": {"fp32": TOLERANCES, "fp16": FP16_TOLERANCES},
        "reference": {"runtime": "eager PyTorch float32 CPU", "torch": str(torch.__version__),
                      **reference},
        "inputs": inputs,
        "export_seconds": seconds,
    }
    failures = failures_of(results)
    if failures:
        parity["failures"] = failures
    card.write_json(out_dir / card.PARITY, parity)
    files = list(formats.FILES.values())
    files += [formats.FP16_FILE] if (out_dir / formats.FP16_FILE).exists() else []
    card.write_json(out_dir / card.CARD, card.model_card(
        ckpt, sha256_of(ckpt_path), out_dir, files + [card.PARITY]))
    return out_dir, parity
