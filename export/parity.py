"""The parity gate: THE one comparison of an exported format against the eager reference.

The CLI, verify, the tests and the benchmark all call ``compare`` (one batch) and
``check_format`` (a format over every parity batch); nothing else decides pass or fail.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

# fp32 on the CPU: the same arithmetic in another runtime; differences are summation order only.
TOLERANCES = {
    "max_abs_logits": 1e-4,
    "argmax_agreement": 1.0,
    "probs_sum_abs": 1e-5,
}
# An fp16 ONNX variant (checked only on a GPU) rounds every activation, so it is held to the
# decision and to the probabilities, not to the logits.
FP16_TOLERANCES = {
    "argmax_agreement": 0.999,
    "max_abs_probs": 1e-2,
    "probs_sum_abs": 1e-3,
}
RANDOM_BATCH_SIZES = (1, 2, 7, 64, 256, 1000)  # the odd sizes catch frozen or padded batches
RANDOM_SEED = 0
REL_EPS = 1e-6  # keeps the relative difference finite where a reference logit is ~0

Outputs = tuple[np.ndarray, np.ndarray]  # (logits, probs) float32 [N, 2]
Runner = Callable[[np.ndarray], Outputs]


@dataclass
class Batch:
    name: str  # "random" or "test"; the name and the size say which inputs failed
    images: np.ndarray  # uint8 [N, 3, 32, 32]


def random_batches(sizes: Iterable[int] = RANDOM_BATCH_SIZES, seed: int = RANDOM_SEED) -> list[Batch]:
    rng = np.random.default_rng(seed)
    return [Batch("random", rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)) for n in sizes]


def compare(ref: Outputs, got: Outputs, fp16: bool = False) -> dict:
    """Compare one batch of outputs against the reference; return stats, ``passed`` and, on a
    failure, ``reason``. Raw differences come back under ``_abs``/``_rel`` for aggregation."""
    ref_logits, ref_probs = (np.asarray(a, dtype=np.float64) for a in ref)
    logits, probs = (np.asarray(a, dtype=np.float64) for a in got)
    if logits.shape != ref_logits.shape or probs.shape != ref_probs.shape:
        return {"passed": False, "n": len(ref_logits),
                "reason": f"output shape {logits.shape}/{probs.shape}, expected {ref_logits.shape}"}
    abs_d = np.abs(logits - ref_logits).ravel()
    rel_d = abs_d / np.maximum(np.abs(ref_logits).ravel(), REL_EPS)
    finite = bool(np.isfinite(logits).all() and np.isfinite(probs).all())
    stats = {
        "n": len(ref_logits),
        "max_abs": float(abs_d.max()) if finite else float("inf"),
        "max_abs_probs": float(np.abs(probs - ref_probs).max()) if finite else float("inf"),
        "argmax_agreement": float((logits.argmax(1) == ref_logits.argmax(1)).mean()),
        "max_probs_sum_err": float(np.abs(probs.sum(1) - 1).max()) if finite else float("inf"),
        "_abs": abs_d, "_rel": rel_d,
    }
    tol = FP16_TOLERANCES if fp16 else TOLERANCES
    failures = {}
    if not finite:
        failures["finite"] = "non-finite outputs"
    if not fp16 and stats["max_abs"] > tol["max_abs_logits"]:
        failures["logits"] = f"max |Δlogits| {stats['max_abs']:.3g} > {tol['max_abs_logits']:g}"
    if fp16 and stats["max_abs_probs"] > tol["max_abs_probs"]:
        failures["probs"] = (f"max |Δprobs| {stats['max_abs_probs']:.3g} "
                             f"> {tol['max_abs_probs']:g}")
    if stats["argmax_agreement"] < tol["argmax_agreement"]:
        failures["argmax"] = (f"argmax agreement {stats['argmax_agreement']:.4%} "
                              f"< {tol['argmax_agreement']:.1%}")
    if stats["max_probs_sum_err"] > tol["probs_sum_abs"]:
        failures["probs_sum"] = (f"probs sum to 1 ± {stats['max_probs_sum_err']:.3g} "
                                 f"> {tol['probs_sum_abs']:g}")
    stats["passed"] = not failures
    stats["_failures"] = failures
    if failures:
        stats["reason"] = "; ".join(failures.values())
    return stats


def check_format(fmt: str, run: Runner, batches: list[Batch], references: list[Outputs],
                 fp16: bool = False) -> dict:
    """Run ``fmt`` on every batch and compare with its reference. Argmax agreement is pooled
    over all images (the fp16 bar of 99.9% is a rate, not a per-batch rule)."""
    per_batch, abs_all, rel_all, agree, total = {}, [], [], 0.0, 0
    failing: list[tuple[float, str]] = []  # (worst |Δlogits|, message) per failing batch
    for batch, ref in zip(batches, references):
        try:
            stats = compare(ref, run(batch.images), fp16=fp16)
        # Any runtime error (ORT has its own exception types) fails parity at that batch size.
        except Exception as e:  # noqa: BLE001
            reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
            stats = {"passed": False, "n": len(batch.images), "reason": reason,
                     "_failures": {"run": reason}}
        key = f"{batch.name}:{len(batch.images)}"
        per_batch[key] = {k: v for k, v in stats.items() if not k.startswith("_")}
        if "_abs" in stats:
            abs_all.append(stats.pop("_abs"))
            rel_all.append(stats.pop("_rel"))
            agree += stats["argmax_agreement"] * stats["n"]
            total += stats["n"]
        # fp16 argmax is judged pooled below; everything else fails at the batch it fails on.
        failures = dict(stats.pop("_failures"))
        if fp16:
            failures.pop("argmax", None)
        if failures:
            failing.append((stats.get("max_abs", float("inf")),
                            f"{fmt}: batch {batch.name} size {len(batch.images)}: "
                            + "; ".join(failures.values())))
    abs_d = np.concatenate(abs_all) if abs_all else np.array([np.inf])
    rel_d = np.concatenate(rel_all) if rel_all else np.array([np.inf])
    agreement = agree / total if total else 0.0
    tol = FP16_TOLERANCES if fp16 else TOLERANCES
    failure = None
    if failing:  # name the batch with the worst difference, and how many others failed
        failure = max(failing, key=lambda f: f[0])[1]
        if len(failing) > 1:
            failure += f" (worst of {len(failing)} failing batches)"
    elif agreement < tol["argmax_agreement"]:
        failure = (f"{fmt}: argmax agreement {agreement:.4%} < {tol['argmax_agreement']:.1%} "
                   f"over {total} images")
    result = {
        "passed": failure is None,
        "max_abs": float(abs_d.max()), "p99_abs": float(np.percentile(abs_d, 99)),
        "max_rel": float(rel_d.max()), "p99_rel": float(np.percentile(rel_d, 99)),
        "argmax_agreement": agreement,
        "max_abs_probs": max(b.get("max_abs_probs", np.inf) for b in per_batch.values()),
        "max_probs_sum_err": max(b.get("max_probs_sum_err", np.inf) for b in per_batch.values()),
        "images": total,
        "batches": per_batch,
    }
    if failure:
        result["failure"] = failure
    return result


def check_formats(runners: dict[str, Runner], providers: dict[str, str], batches: list[Batch],
                  references: list[Outputs]) -> dict[str, dict]:
    """``check_format`` for every runner, each result tagged with the provider that ran it."""
    return {fmt: {**check_format(fmt, run, batches, references), "provider": providers[fmt]}
            for fmt, run in runners.items()}


def failures_of(results: dict[str, dict]) -> list[str]:
    return [r["failure"] for r in results.values() if not r["passed"]]


def summary_lines(parity: dict) -> list[str]:
    """A fixed-column table of a parity.json for the terminal."""
    header = (f"{'format':<18}{'provider':<22}{'max|Δ|':>10}{'p99|Δ|':>10}{'max rel':>10}"
              f"{'argmax':>9}  result")
    lines = [header]
    for fmt, r in parity["formats"].items():
        lines.append(f"{fmt:<18}{r.get('provider', '-'):<22}{r['max_abs']:>10.2e}"
                     f"{r['p99_abs']:>10.2e}{r['max_rel']:>10.2e}{r['argmax_agreement']:>9.2%}  "
                     f"{'pass' if r['passed'] else 'FAIL: ' + r.get('failure', '')}")
    return lines


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def pack_reference(references: list[Outputs]) -> dict:
    """The eager logits of the random batches, stored in parity.json so that verify can re-run
    the gate against the true eager reference without the checkpoint."""
    logits = np.concatenate([r[0] for r in references]).astype("<f4")
    return {"logits_float32_le_base64": base64.b64encode(logits.tobytes()).decode(),
            "shape": list(logits.shape)}


def unpack_reference(packed: dict, batches: list[Batch]) -> list[Outputs]:
    logits = np.frombuffer(base64.b64decode(packed["logits_float32_le_base64"]), dtype="<f4")
    logits = logits.reshape(packed["shape"])
    sizes = np.cumsum([0] + [len(b.images) for b in batches])
    if sizes[-1] != len(logits):
        raise ValueError(f"reference holds {len(logits)} rows, the batches {sizes[-1]}")
    return [(logits[a:b], softmax(logits[a:b])) for a, b in itertools.pairwise(sizes)]
