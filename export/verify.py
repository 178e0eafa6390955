"""Re-run the parity gate on files that already exist: an artifact folder or a store tag.

    python -m export.verify artifacts/net
    python -m export.verify cifar2-net:latest        # the BentoML store (BENTOML_HOME)

Every format is run again on the same seeded random batches and compared, with the one
comparison function, against the eager float32 logits recorded in parity.json at export time;
the files' sha256 are checked against model.json too. Exit codes: 0 passed, 1 a format fails
parity or a file changed, 2 a file is missing, truncated or unreadable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export import card, formats
from export.formats import FP16_FILE, ArtifactError
from export.inputs import recorded_batches
from export.parity import check_format, check_formats, failures_of, summary_lines
from export.runtime import CUDA


def resolve(target: str) -> Path:
    """A folder as is; anything else is looked up as a tag in the BentoML model store."""
    path = Path(target)
    if path.is_dir():
        return path
    if path.exists() or "/" in target:
        raise ArtifactError(f"{target}: not an artifact folder (expected a folder such as "
                            "artifacts/net, or a store tag such as cifar2-net:latest)")
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        return Path(bentoml.models.get(target).path)
    except (BentoMLException, ValueError) as e:
        raise ArtifactError(f"{target}: not in the BentoML model store ({e}); "
                            "list it with `bentoml models list`") from None


def verify(folder: Path) -> dict:
    """Parity of every format in ``folder`` against the recorded eager reference.
    Raises ArtifactError for a file that cannot be read at all."""
    model_card = card.read_json(folder / card.CARD)
    parity = card.read_json(folder / card.PARITY)
    try:
        batches, references = recorded_batches(parity)
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{folder / card.PARITY}: no usable eager reference ({e}); "
                            "re-run `python -m export <checkpoint>`") from None
    runners, runtime = formats.load_runners(folder)
    results = check_formats(runners, runtime["providers"], batches, references)
    if (folder / FP16_FILE).is_file() and runtime["providers"].get("onnxruntime_cuda") == CUDA:
        run16, provider = formats.load_onnx(folder / FP16_FILE, "cuda")
        results["onnxruntime_cuda_fp16"] = {
            **check_format("onnxruntime_cuda_fp16", run16, batches, references, fp16=True),
            "provider": provider}
    changed = card.changed_files(folder, model_card)
    failures = failures_of(results)
    failures += [f"{name}: sha256 differs from model.json (changed after export)"
                 for name in changed]
    return {"passed": not failures, "formats": results, "failures": failures,
            "skipped": runtime["skipped"], "changed_files": changed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.verify",
                                description=__doc__.splitlines()[0])
    p.add_argument("target", help="an artifact folder or a store tag (cifar2-net:latest)")
    args = p.parse_args(argv)
    try:
        folder = resolve(args.target)
        result = verify(folder)
    except ArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"verify {folder}")
    print("\n".join(summary_lines(result)))
    for failure in result["failures"]:
        print(f"FAILED: {failure}", file=sys.stderr)
    if result["passed"]:
        print("verify passed")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
