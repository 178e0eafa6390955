"""Register two tiny untrained models (cifar2-net, cifar2-dense) in a BentoML store, through the
real exporter: what the container test builds its image from on a fresh clone, in seconds
instead of a training run. Their answers are random; everything else about them is real.

    .venv/bin/python scripts/tiny_models.py BENTOML_HOME_DIR

The checkpoints come from the test suite's own helper (tests/conftest.py untrained_checkpoint),
the same ones the HTTP tests serve.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def register(home: Path) -> None:
    from conftest import untrained_checkpoint

    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("net", "dense"):
            ckpt = untrained_checkpoint(name, Path(tmp) / f"{name}.pt")
            done = subprocess.run([sys.executable, "-m", "export", str(ckpt), "--out",
                                   str(Path(tmp) / name), "--register", "--quiet"],
                                  check=False, cwd=ROOT, env=env, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"export of the tiny {name} failed:\n{done.stdout}{done.stderr}")
            print(f"registered a tiny untrained cifar2-{name} in {home}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    register(Path(sys.argv[1]).resolve())
