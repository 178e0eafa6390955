"""Export a checkpoint to ONNX, TorchScript and torch.export behind the parity gate.

    python -m export runs/net.pt                       # -> artifacts/net/
    python -m export runs/net.pt --data-dir DIR        # also gate on the real test images
    python -m export runs/net.pt --out DIR --register  # and store it as cifar2-net
    python -m export runs/net.pt --fp16                # + model.fp16.onnx, for a GPU check

Exit codes: 0 passed (and registered); 1 parity failed; 2 bad input (missing or foreign
checkpoint, unknown model) or a refused registration (parity failed with --register).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.parity import summary_lines


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m export",
                                description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="a checkpoint written by `python -m models.train`")
    p.add_argument("--out", type=Path, help="artifact folder (default: artifacts/<model>)")
    p.add_argument("--data-dir", help="ImageFolder tree for the real test images "
                                      "(default: $CIFAR2_DATA; without either, random inputs only)")
    p.add_argument("--register", action="store_true",
                   help="store the artifacts in the BentoML model store when parity passes")
    p.add_argument("--fp16", action="store_true",
                   help="also write model.fp16.onnx where no GPU checks it (to carry to one)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported after argparse so that --help is instant.
    from export.formats import ArtifactError
    from export.pipeline import export_checkpoint
    from export.register import RegisterError, register
    from models.checkpoint import CheckpointError
    from models.data import DataError
    from models.nets import UnknownModelError

    try:
        out, parity = export_checkpoint(args.checkpoint, args.out, args.data_dir,
                                        progress=not args.quiet, fp16=args.fp16)
    except (CheckpointError, UnknownModelError, DataError, ArtifactError) as e:
        msg = e.args[0] if e.args else str(e)
        if isinstance(e, UnknownModelError):
            msg = f"{args.checkpoint}: {msg}"
        print(f"error: {msg}", file=sys.stderr)
        return 2

    print(f"{out}: {', '.join(sorted(p.name for p in out.iterdir() if p.is_file()))}")
    print("\n".join(summary_lines(parity)))
    for fmt, why in parity["skipped"].items():
        print(f"skipped {fmt}: {why}")
    if not parity["passed"]:
        for failure in parity["failures"]:
            print(f"parity FAILED: {failure}", file=sys.stderr)
        if args.register:
            print("error: not registering: parity failed", file=sys.stderr)
            return 2
        return 1
    print(f"parity passed on {parity['formats']['onnxruntime_cpu']['images']} images per format")
    if args.register:
        try:
            tag = register(out)
        except RegisterError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"registered {tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
