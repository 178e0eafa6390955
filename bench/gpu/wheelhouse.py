"""Build the wheelhouse that `make gpu-check` installs from on a GPU machine with no registry.

    make wheelhouse PYTHON_VERSION=3.12            # = python -m bench.gpu.wheelhouse --python-version 3.12
    python -m bench.gpu.wheelhouse --python-version 3.12 --with-cuda   # also CUDA + cuDNN wheels

Run it where PyPI is reachable. The requirements are the service's runtime list (bentofile.yaml's
python.packages, the one runtime spec) plus what bench/gpu_check.py itself imports (httpx, tqdm),
at the versions installed in this environment, so the GPU machine runs what was tested here.
CUDA and cuDNN are left out unless --with-cuda: a machine with a CUDA 13 PyTorch already has them
as pip packages, and bench/gpu/setup.py finds them there (the extras would add ~1 GB).

A device call carries at most 64 MiB, so the wheels are laid out in folders ``carry-N/`` of at
most --group-mib each, one folder per call, and a wheel larger than --part-mib (onnxruntime-gpu)
is cut into parts that setup.py joins and checks against the sha256 in ``manifest.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from bench.gpu.install import MIB, sha256

ROOT = Path(__file__).resolve().parents[2]
# What bench/gpu_check.py and its helpers import beyond the service's runtime.
CHECK_REQUIREMENTS = ["httpx", "tqdm"]
MANYLINUX = ["manylinux1_x86_64", "manylinux2014_x86_64",
             *(f"manylinux_2_{n}_x86_64" for n in range(17, 40))]


def requirements(with_cuda: bool) -> list[str]:
    """bentofile.yaml's packages (extras dropped unless with_cuda) + the check's own."""
    spec = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    reqs = []
    for line in spec["python"]["packages"]:
        if not with_cuda:
            line = re.sub(r"\[[^\]]*\]", "", line)
        reqs.append(line)
    return reqs + CHECK_REQUIREMENTS


def constraints() -> str:
    """name==version of every distribution in this environment: pins for the download."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and "+" not in dist.version and name.lower() != "cifar2-serving":
            pins[name.lower()] = f"{name}=={dist.version}"
    return "\n".join(sorted(pins.values())) + "\n"


def download(reqs: list[str], python_version: str, dest: Path) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as c:
        c.write(constraints())
    abi = "cp" + python_version.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--implementation",
           "cp", "--python-version", python_version, "--abi", abi, "--abi", "abi3",
           "--abi", "none", "-c", c.name, "-d", str(dest), "--progress-bar", "off"]
    for plat in MANYLINUX:
        cmd += ["--platform", plat]
    done = subprocess.run(cmd + reqs, check=False)
    Path(c.name).unlink()
    if done.returncode:
        sys.exit(f"pip download failed (exit {done.returncode}); it needs PyPI and wheels for "
                 f"Python {python_version} on manylinux x86-64")


def lay_out(wheels: list[Path], out: Path, part_mib: float, group_mib: float,
            info: dict) -> dict:
    """Cut big wheels into parts, put every piece into carry-N/ folders of <= group_mib
    (first fit, largest first), and write the manifest (``info`` added) into each folder."""
    pieces: list[tuple[str, int, Path, int]] = []  # (name, size, source, offset)
    entries = []
    part = int(part_mib * MIB)
    for whl in sorted(wheels):
        size = whl.stat().st_size
        entry = {"file": whl.name, "sha256": sha256(whl), "size": size, "parts": []}
        if size > part:
            for i, offset in enumerate(range(0, size, part)):
                name = f"{whl.name}.part-{i:02d}"
                entry["parts"].append(name)
                pieces.append((name, min(part, size - offset), whl, offset))
        else:
            pieces.append((whl.name, size, whl, 0))
        entries.append(entry)
    groups: list[list[tuple[str, int, Path, int]]] = []
    for piece in sorted(pieces, key=lambda p: -p[1]):
        for group in groups:
            if sum(p[1] for p in group) + piece[1] <= group_mib * MIB:
                group.append(piece)
                break
        else:
            groups.append([piece])
    where = {}
    for n, group in enumerate(groups, 1):
        folder = out / f"carry-{n}"
        folder.mkdir(parents=True)
        for name, size, src, offset in group:
            with src.open("rb") as f_in, (folder / name).open("wb") as f_out:
                f_in.seek(offset)
                f_out.write(f_in.read(size))
            where[name] = folder.name
    for entry in entries:
        entry["where"] = {p: where[p] for p in (entry["parts"] or [entry["file"]])}
    manifest = {**info, "groups": [f"carry-{n}" for n in range(1, len(groups) + 1)],
                "group_bytes": [sum(p[1] for p in g) for g in groups], "wheels": entries}
    text = json.dumps(manifest, indent=1) + "\n"
    for group in manifest["groups"]:  # each folder carries its own copy
        (out / group / "manifest.json").write_text(text)
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python (X.Y)")
    p.add_argument("--out", type=Path, default=ROOT / "wheelhouse")
    p.add_argument("--with-cuda", action="store_true",
                   help="add onnxruntime-gpu's [cuda,cudnn] extras (CUDA 13 + cuDNN 9 wheels)")
    p.add_argument("--part-mib", type=float, default=59, help="largest piece of a wheel")
    p.add_argument("--group-mib", type=float, default=60,
                   help="largest carry-N folder (a call carries 64 MiB, the tree included)")
    args = p.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python_version):
        print(f"error: --python-version {args.python_version!r}: use X.Y, e.g. 3.12",
              file=sys.stderr)
        return 2
    reqs = requirements(args.with_cuda)
    with tempfile.TemporaryDirectory() as tmp:
        download(reqs, args.python_version, Path(tmp))
        shutil.rmtree(args.out, ignore_errors=True)
        manifest = lay_out(sorted(Path(tmp).glob("*.whl")), args.out, args.part_mib,
                           args.group_mib, {"python_version": args.python_version,
                                            "requirements": reqs, "with_cuda": args.with_cuda})
    total = sum(w["size"] for w in manifest["wheels"])
    print(f"{len(manifest['wheels'])} wheels, {total / MIB:.0f} MiB, in "
          f"{len(manifest['groups'])} folders to carry one per call:")
    for group, size in zip(manifest["groups"], manifest["group_bytes"]):
        print(f"  {args.out.name}/{group}  {size / MIB:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
