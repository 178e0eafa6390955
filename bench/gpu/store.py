"""A BentoML model store made from a GPU bundle: what `bentoml serve` loads on the GPU machine.

    BENTOML_HOME=/tmp/home python -m bench.gpu.store gpu-bundle

Each bundled model becomes ``cifar2-<model>`` with the labels and metadata that export.register
computed on the export machine (carried in bundle.json), and only the carried files. A process
of its own: BentoML fixes its store at first import, from BENTOML_HOME.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import bentoml

    bundle = Path((argv or sys.argv[1:])[0])
    spec = json.loads((bundle / "bundle.json").read_text())
    for name, model in spec["models"].items():
        store = model["store"]
        with bentoml.models.create(store["name"], labels=store["labels"],
                                   metadata=store["metadata"]) as stored:
            for file in sorted((bundle / model["folder"]).iterdir()):
                shutil.copy2(file, stored.path_of(file.name))
        print(f"{name}: {stored.tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
