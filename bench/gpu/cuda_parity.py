"""The parity gate on the GPU: the carried ONNX files run by ONNX Runtime's CUDA provider,
compared by export.parity (the one comparison) with the eager reference kept in parity.json.

fp32 runs with TF32 off (export.runtime.providers_for) and is held to the export's fp32 bar
(max |Δlogits| <= 1e-4, every argmax equal); the fp16 variant to the fp16 bar (argmax >= 99.9%
pooled, max |Δprobs| <= 1e-2) on the real test images when they were carried, else on the random
batches, as the exporter does. On a CPU run the same code runs on the CPU provider: a check of
the code path, not a GPU figure.
"""

from __future__ import annotations

from pathlib import Path

from export.inputs import recorded_batches
from export.parity import check_format
from export.runtime import open_session, run_session


def check_model(folder: Path, parity: dict, test_images, device: str) -> dict:
    """{"onnxruntime_<device>": fp32 result, "onnxruntime_<device>_fp16": fp16 result}."""
    batches, references = recorded_batches(parity, test_images)
    out = {}
    # The file names of export/formats.py (not imported: it needs torch).
    for fmt, file, fp16 in ((f"onnxruntime_{device}", "model.onnx", False),
                            (f"onnxruntime_{device}_fp16", "model.fp16.onnx", True)):
        try:
            sess, provider = open_session(folder / file, device=device)
        except Exception as e:  # noqa: BLE001 - the report names the failure; the run goes on
            out[fmt] = {"passed": False, "failure": f"{type(e).__name__}: {e}"}
            continue
        chosen = range(len(batches))
        if fp16:  # decisions on real images when there are some, as the exporter judges fp16
            chosen = [i for i, b in enumerate(batches) if b.name == "test"] or chosen
        result = check_format(fmt, lambda x, s=sess: run_session(s, x),
                              [batches[i] for i in chosen], [references[i] for i in chosen],
                              fp16=fp16)
        result["inputs"] = sorted({batches[i].name for i in chosen})
        out[fmt] = {**result, "provider": provider}
    return out
