"""Our two inference routes on Ray Serve, batched with @serve.batch. Run in the peers' venv from
the repository root; bench_peers.py starts it:

    PYTHONPATH=. .venv-peers/bin/python -m bench.peers.ray_app MODEL.onnx --port 3300 --replicas 2

POST /predict  JSON {"images": [N][3][32][32]}  -> [N][2] probabilities (as ours)
POST /classify multipart, JPEG files in 'images' -> {"predictions": [{label, probabilities}]}
GET  /health   200 once the application is deployed

Starts a local Ray cluster (no dashboard) and Serve's HTTP proxy on --port; SIGTERM shuts
both down. Each replica takes one CPU and decodes its own requests, as Ray's docs show.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

import numpy as np
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse

from bench.peers.common import Model, classify_reply, images_from_files, images_from_json
from service.errors import BadInput


@serve.deployment
class Cifar2:
    def __init__(self, model_path: str, max_batch_size: int, batch_wait_timeout_s: float):
        self.model = Model(model_path)
        self.infer.set_max_batch_size(max_batch_size)
        self.infer.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch  # sizes set in __init__ from the command line
    async def infer(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self.model.probs_split(arrays)

    async def __call__(self, request: Request):
        path = request.url.path
        if request.method == "GET" and path == "/health":
            return PlainTextResponse("ok")
        try:
            if request.method == "POST" and path == "/predict":
                probs = await self.infer(images_from_json(await request.json()))
                return JSONResponse(probs.tolist())
            if request.method == "POST" and path == "/classify":
                form = await request.form()
                files = [await f.read() for f in form.getlist("images")]
                return JSONResponse(classify_reply(await self.infer(images_from_files(files))))
        except BadInput as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        except ValueError as e:  # a body that is not JSON
            return JSONResponse({"error": f"bad request body: {e}"}, status_code=400)
        return JSONResponse({"error": f"no route {request.method} {path}"}, status_code=404)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="path of the convnet's model.onnx")
    p.add_argument("--port", type=int, default=3300)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-timeout", type=float, default=0.005, help="seconds")
    args = p.parse_args()
    ray.init(include_dashboard=False, logging_level="warning", log_to_driver=False)
    stopping = threading.Event()  # set by SIGTERM; after ray.init, which installs its own
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        # Ray's docs: max_ongoing_requests must exceed max_batch_size, or batches never fill.
        app = Cifar2.options(num_replicas=args.replicas,
                             max_ongoing_requests=2 * args.max_batch_size,
                             ray_actor_options={"num_cpus": 1}).bind(
            args.model, args.max_batch_size, args.batch_wait_timeout)
        serve.run(app, name="cifar2", route_prefix="/")
        print(f"ray serve ready on 127.0.0.1:{args.port}", flush=True)
        stopping.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
