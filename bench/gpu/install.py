"""Install the carried wheelhouse on a GPU machine that reaches no package registry.

    python3 bench/gpu/install.py [--wheelhouse wheelhouse] [--target .gpu-site]
    PYTHONPATH=.gpu-site python3 -m bench.gpu_check      # what `make gpu-check` runs next

Standard library only: it runs before anything is installed. It joins the wheels that travelled
in parts, checks every wheel against the sha256 in manifest.json (written by
bench/gpu/wheelhouse.py), and installs them with pip into --target, without an index and without
resolving: the wheelhouse is already the whole, pinned set. Nothing of the machine's own Python is
changed: the target folder goes first on PYTHONPATH, so its onnxruntime-gpu shadows a CPU
onnxruntime there, and CUDA/cuDNN still come from the machine's NVIDIA pip packages
(export/runtime.py finds them). Exit codes: 0 installed (or already), 2 a problem it names.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

MIB = 1024 * 1024


class Refused(Exception):
    """The wheelhouse cannot be installed; the message says why and what to do."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(wheelhouse: Path) -> dict:
    found = sorted(wheelhouse.glob("carry-*/manifest.json"))
    if not found:
        raise Refused(f"no wheelhouse in {wheelhouse}/: build it where PyPI is "
                      "reachable with `make wheelhouse PYTHON_VERSION=3.12` and carry its "
                      "carry-N folders here (docs/gpu.md says how)")
    return json.loads(found[0].read_text())


def whole_wheels(wheelhouse: Path, manifest: dict) -> list[Path]:
    """Every wheel of the manifest as one checked file; parts are joined into joined/."""
    missing = sorted({f"{wheelhouse.name}/{group}/{piece}" for w in manifest["wheels"]
                      for piece, group in w["where"].items()
                      if not (wheelhouse / group / piece).is_file()})
    if missing:
        groups = sorted({m.split("/")[1] for m in missing})
        raise Refused(f"{len(missing)} wheel files missing (first: {missing[0]}); "
                      f"carry {', '.join(groups)} here too")
    wheels = []
    for w in manifest["wheels"]:
        if w["parts"]:
            path = wheelhouse / "joined" / w["file"]
            if not path.is_file() or sha256(path) != w["sha256"]:
                path.parent.mkdir(exist_ok=True)
                with path.open("wb") as out:
                    for part in w["parts"]:
                        out.write((wheelhouse / w["where"][part] / part).read_bytes())
        else:
            path = wheelhouse / w["where"][w["file"]] / w["file"]
        if path.stat().st_size != w["size"] or sha256(path) != w["sha256"]:
            raise Refused(f"{path} is damaged (size or sha256 differs from "
                          "manifest.json); carry its folder again")
        wheels.append(path)
    return wheels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheelhouse", type=Path, default=Path("wheelhouse"))
    p.add_argument("--target", type=Path, default=Path(".gpu-site"))
    args = p.parse_args(argv)
    try:
        return install(args.wheelhouse, args.target)
    except Refused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def install(wheelhouse: Path, target: Path) -> int:
    manifest = load_manifest(wheelhouse)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here != manifest["python_version"]:
        raise Refused(f"the wheelhouse is for Python {manifest['python_version']}, "
                      f"this is {here}: rebuild it with `make wheelhouse PYTHON_VERSION={here}`")
    stamp = target / ".installed"
    key = hashlib.sha256(json.dumps(manifest["wheels"], sort_keys=True).encode()).hexdigest()
    if stamp.is_file() and stamp.read_text() == key:
        print(f"{target}: the wheelhouse is already installed")
        return 0
    wheels = whole_wheels(wheelhouse, manifest)
    print(f"installing {len(wheels)} checked wheels into {target}")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index",
                           "--no-deps", "--no-compile", "--disable-pip-version-check",
                           "--upgrade", "--target", str(target), *map(str, wheels)],
                          check=False)
    if done.returncode:
        raise Refused(f"pip install failed (exit {done.returncode})")
    stamp.write_text(key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
