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

import pytest
from test_service_http import ROOT, store  # noqa: F401 - store is a fixture

from service import memory


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


# A worker after share_cpu_arena builds and frees a bulk request's body again and again (1,024
# images: 3 MiB; 4,096: 12 MiB). Counts the page faults of 50 such bodies after the first: with
# glibc's default trim threshold (3 MiB) or a 4 MiB mmap threshold (12 MiB), each freed body went
# back to the kernel and the next one faulted in all its pages again.
BODY_LOOP = """
import resource
import sys
import onnxruntime as ort
from service.memory import share_cpu_arena
share_cpu_arena(ort.SessionOptions())
pieces = [b"x" * 65536] * int(sys.argv[1])
def body():
    return len(b"".join(pieces))
body()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    body()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(memory.glibc() is None, reason="mallopt is glibc's")
@pytest.mark.parametrize("pieces", [48, 192])  # of 64 KiB: 3 and 12 MiB
def test_a_freed_bulk_body_is_reused_without_page_faults(pieces):
    done = subprocess.run([sys.executable, "-c", BODY_LOOP, str(pieces)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    faults, pages = int(done.stdout), pieces * 16  # one body's pages
    assert faults < pages, f"{faults} page faults for 50 bodies of {pages} pages each"
