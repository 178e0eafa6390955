"""Worker memory stays flat through varying batch sizes (service/memory.py): the service's ONNX
Runtime sessions, run by three threads through a seeded sequence of batch sizes with bursts up
to 1,024, keep RSS flat after the first round. With ORT's default sessions (one arena per
session, growing by powers of two, never giving back) the same run kept growing: +25% to +52%
after the warm-up, with this test failing.

    pytest tests/test_memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys

from test_service_http import ROOT, store  # noqa: F401 - store is a fixture


def test_rss_flat_through_batch_sizes(store, tmp_path):
    models = [next((store / "models" / name).glob("*/model.onnx"))
              for name in ("cifar2-net", "cifar2-dense")]
    out = tmp_path / "memory.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.reliability.memory", "--configs", "service", "--rounds",
         "3", "--onnx", *map(str, models), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    (result,) = json.loads(out.read_text())
    rounds, warm = result["rss_rounds"], result["rss_warm"]
    # Flat once the first round has touched what the warm-up did not of the kept region (ORT's
    # defaults: +48 to +145 MiB from the first round to the third).
    assert rounds[-1] - rounds[0] < 16, result
    # Whatever the warm-up touched: nothing near the 170 MiB that ORT's defaults kept.
    assert max(rounds) - warm < 64, result
