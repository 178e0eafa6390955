"""How a bulk batch should use two cores: two ORT calls at once, or one call on two threads.

    python -m bench.bulk_lanes [--seconds 3] [--repeat 3]

The served convnet (CIFAR2_CONVNET, default cifar2-net:latest, from the model store),
in-process, 1,024 images at a time in calls of CIFAR2_CPU_CHUNK (64) images, as a worker runs
a bulk batch:
- "1 lane x 1 thread": one call at a time on a one-thread session (a worker on its own share);
- "1 lane x N threads": one call at a time on an N-thread session that does not spin (how a
  worker used to borrow idle cores);
- "N lanes x 1 thread": N calls at once, each on the one-thread session (how it borrows them
  now, service/runtime.py ServedModel._bulk_calls).
N is the usable cores (2 on a 2-core machine). Prints images/s, the median of --repeat windows per row.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import bentoml
import numpy as np

from service import config
from service.runtime import open_serving_session, run_serving_session, usable_cores


def images_per_s(session, lanes: int, seconds: float, chunk: int) -> float:
    x = np.random.default_rng(0).integers(0, 256, (1024, 3, 32, 32), dtype=np.uint8)
    run_serving_session(session, x[:chunk])
    done = 0
    end = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < end:
        parts = iter(range(0, len(x), chunk))  # shared: each lane takes the next part

        def lane(parts=parts) -> None:
            for a in parts:
                run_serving_session(session, x[a:a + chunk])
        helpers = [threading.Thread(target=lane) for _ in range(lanes - 1)]
        for h in helpers:
            h.start()
        lane()
        for h in helpers:
            h.join()
        done += len(x)
    return done / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    cores = usable_cores()
    chunk = config.CPU_CHUNK or 64
    path = bentoml.models.get(config.CONVNET_TAG).path_of("model.onnx")
    one = open_serving_session(path, "cpu", 1, spin=False)[0]
    wide = open_serving_session(path, "cpu", cores, spin=False)[0]
    rows = [("1 lane x 1 thread", one, 1), (f"1 lane x {cores} threads", wide, 1),
            (f"{cores} lanes x 1 thread", one, cores)]
    print(f"{config.CONVNET_TAG}, 1,024 images in calls of {chunk}, {cores} usable cores, "
          f"median of {args.repeat} x {args.seconds:g} s\n")
    print("| how | images/s |\n| --- | ---: |")
    for name, session, lanes in rows:
        rates = [images_per_s(session, lanes, args.seconds, chunk) for _ in range(args.repeat)]
        print(f"| {name} | {statistics.median(rates):,.0f} |")


if __name__ == "__main__":
    main()
