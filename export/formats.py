"""Writers and loaders for the three exported formats of the serving graph.

Each loader returns a runner ``run(images uint8 ndarray [N,3,32,32]) -> (logits, probs)`` as
float32 ndarrays, so parity treats every format the same way.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch

from export.graph import INPUT_NAME, OUTPUT_NAMES, example_images
from export.optimize import pool_before_activation
from export.runtime import RuntimeUnavailable, open_session, run_session

Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
OPSET = 18
# The batch range declared to torch.export (model.pt2 checks it when run; in model.onnx the
# dimension is symbolic). The tests run the ONNX graph at 4096.
MAX_BATCH = 65536

FILES = {"onnx": "model.onnx", "torchscript": "model.ts", "torch_export": "model.pt2"}
FP16_FILE = "model.fp16.onnx"  # written and checked only where ONNX Runtime runs on CUDA


class ArtifactError(ValueError):
    """An exported file that is missing, truncated or not loadable."""


@contextlib.contextmanager
def _quiet_torchscript():
    """TorchScript is deprecated in torch 2.14 and trace/save/load each emit a FutureWarning.
    We keep the format on purpose, so silence exactly those messages, only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"`torch\.jit\.(trace|trace_method|save|load)` is (deprecated|not supported)",
            category=FutureWarning,
        )
        yield


def _batch_dim() -> dict:
    return {"images": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}}


def export_program(graph: torch.nn.Module) -> torch.export.ExportedProgram:
    return torch.export.export(graph, (example_images(),), dynamic_shapes=_batch_dim(),
                               strict=False)


def write_onnx(graph: torch.nn.Module, path: Path,
               program: torch.export.ExportedProgram | None = None) -> Path:
    """One self-contained file (no external .data), opset 18, dynamic batch, fully checked, with
    the exact rewrites of export/optimize.py applied."""
    onnx_program = torch.onnx.export(
        program if program is not None else graph, (example_images(),),
        input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
        opset_version=OPSET, dynamo=True, external_data=False,
        dynamic_shapes=None if program is not None else _batch_dim(), verbose=False,
    )
    onnx_program.save(str(path), external_data=False)
    model = onnx.load(str(path))
    if pool_before_activation(model):
        onnx.save(model, str(path))
    onnx.checker.check_model(model, full_check=True)
    return path


def write_torchscript(graph: torch.nn.Module, path: Path) -> Path:
    # Tracing, not scripting: the zoo's forward() uses Python-level conditionals that trace away.
    with _quiet_torchscript(), torch.no_grad():
        traced = torch.jit.trace(graph, example_images(), check_trace=False)
        torch.jit.save(traced, str(path))
    return path


def write_pt2(program: torch.export.ExportedProgram, path: Path) -> Path:
    torch.export.save(program, str(path))
    return path


def torch_runner(module) -> Runner:
    """A PyTorch module (eager, TorchScript or torch.export) as a runner, in inference mode."""
    def run(images: np.ndarray):
        with torch.inference_mode():
            logits, probs = module(torch.from_numpy(np.ascontiguousarray(images)))
        return logits.numpy(), probs.numpy()
    return run


@contextlib.contextmanager
def _loading(path: Path, what: str):
    """Turn any failure to load ``path`` into one clear ArtifactError naming the file."""
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; re-run `python -m export <checkpoint>`")
    if path.stat().st_size == 0:
        raise ArtifactError(f"{path}: empty file; re-run `python -m export <checkpoint>`")
    try:
        yield
    except (ArtifactError, RuntimeUnavailable):
        raise
    except Exception as e:  # noqa: BLE001 - ORT, torch.jit and torch.export each raise their own
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ArtifactError(
            f"{path}: not a loadable {what} file, truncated or corrupt "
            f"({type(e).__name__}: {first}); re-run `python -m export <checkpoint>`"
        ) from None


def load_onnx(path: Path, device: str = "cpu") -> tuple[Runner, str]:
    """ONNX Runtime runner and the provider that really runs it."""
    with _loading(path, "ONNX"):
        sess, provider = open_session(path, device=device)
    return (lambda images: run_session(sess, images)), provider


def load_torchscript(path: Path) -> Runner:
    # A TorchScript archive is code plus tensors; load only files this exporter wrote.
    with _loading(path, "TorchScript"), _quiet_torchscript():
        module = torch.jit.load(str(path), map_location="cpu").eval()
    return torch_runner(module)


def load_pt2(path: Path) -> Runner:
    with _loading(path, "torch.export"):
        if not zipfile.is_zipfile(path):  # a .pt2 is a zip archive; a cut one loses its index
            raise zipfile.BadZipFile("not a zip archive")
        # torch.export logs a full traceback for a broken archive before retrying an older
        # format; the failure is reported once, by _loading, instead.
        logger = logging.getLogger("torch.export")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            module = torch.export.load(str(path)).module()
        finally:
            logger.setLevel(level)
    return torch_runner(module)


def load_runners(artifact_dir: Path, cuda: bool = True) -> tuple[dict[str, Runner], dict]:
    """Every format of an artifact folder as a runner, named as parity.json names them, plus
    the providers that really run the ONNX sessions and any format that was skipped (and why).
    ONNX Runtime CUDA is included only when the session really runs on CUDA."""
    artifact_dir = Path(artifact_dir)
    runners = {"torchscript": load_torchscript(artifact_dir / FILES["torchscript"]),
               "torch_export": load_pt2(artifact_dir / FILES["torch_export"])}
    runners["onnxruntime_cpu"], provider = load_onnx(artifact_dir / FILES["onnx"], "cpu")
    providers = {"torchscript": "PyTorch CPU", "torch_export": "PyTorch CPU",
                 "onnxruntime_cpu": provider}
    skipped = {}
    if cuda:
        try:
            runners["onnxruntime_cuda"], providers["onnxruntime_cuda"] = load_onnx(
                artifact_dir / FILES["onnx"], "cuda")
        except RuntimeUnavailable as e:
            skipped["onnxruntime_cuda"] = str(e)
    return runners, {"providers": providers, "skipped": skipped}
