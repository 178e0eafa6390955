"""Whether the other workers of this server have requests in progress: one byte per worker in a
small shared memory file, so that a worker's bulk batch can borrow their cores while they idle.

    from service.neighbours import neighbours
    neighbours().mark(busy)        # this worker: requests in progress or not (service/limits.py)
    neighbours().others_busy()     # before each ORT call of a bulk batch (service/runtime.py)

Why: BentoML's workers accept on one shared socket, and the kernel hands each new connection
to whichever worker accepts first. A client's few connections can all land on one worker:
of 6 runs of wrk with 4 connections (`ss -tnp` on the port during each), 1 put all 4 on one
worker, and bulk /predict ran at 45 instead of ~80 requests/s, one core working and one idle.
A worker with one ORT thread cannot use the idle core. A session with more threads for every
bulk batch can, but when both workers are busy it only makes them fight over the cores (84 ->
69 requests/s at c=2 with the connections split evenly, `python -m bench.ab_http` against
that variant, not kept). So a worker borrows only while every other worker has nothing in
progress, checked before each ORT call of a batch (CIFAR2_CPU_CHUNK images, ~1 ms), and gives
the cores back within one call once a neighbour gets work. It borrows them as more lanes, more
calls of the batch at once on its own share of threads (service/runtime.py), not as more
threads in one call: two single-thread calls at once ran 107,650 images/s in-process on 2
cores, one call on two threads 88,210 (`python -m bench.bulk_lanes`).

The file is /dev/shm/cifar2-workers-<pid of the server process> (the workers' parent), with
CIFAR2_WORKERS bytes. A worker that dies busy leaves its byte set until its replacement starts:
its neighbours then keep to their own share of the cores, as without this module. Outside
`bentoml serve` (no worker index) every neighbour counts as busy, so nothing is borrowed.
"""

from __future__ import annotations

import functools
import mmap
import os
import tempfile
from pathlib import Path

PREFIX = "cifar2-workers-"


def board_folder() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


class Neighbours:
    """This worker's byte and a view of the others' in one shared file."""

    def __init__(self, path: Path | None, index: int | None, workers: int):
        self.index, self.workers, self.board = index, workers, None
        if path is None or index is None or not 0 <= index < workers or workers < 2:
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < workers:
                os.ftruncate(fd, workers)
            self.board = mmap.mmap(fd, workers)
        finally:
            os.close(fd)
        self.board[index] = 0  # a replaced worker's byte may still say busy

    def mark(self, busy: bool) -> None:
        if self.board is not None:
            self.board[self.index] = busy

    def others_busy(self) -> bool:
        if self.board is None:
            return True
        return self.board[:self.workers].count(1) - self.board[self.index] > 0


@functools.cache
def neighbours() -> Neighbours:
    """This worker's board, opened at first use: in the worker, once BentoML has set its
    index."""
    from bentoml._internal.context import server_context

    from service import config

    index = server_context.worker_index  # 1-based under `bentoml serve`, else None
    folder = board_folder()
    try:
        if Path("/proc").is_dir():
            for old in folder.glob(PREFIX + "*"):  # boards of servers that are gone
                pid = old.name[len(PREFIX):]
                if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                    old.unlink(missing_ok=True)
    except OSError:  # another user's board, say: not ours to tidy
        pass
    try:
        return Neighbours(folder / f"{PREFIX}{os.getppid()}",
                          None if index is None else index - 1, config.WORKERS)
    except OSError:  # no shared memory to be had: keep to one thread
        return Neighbours(None, None, config.WORKERS)
