"""Our two inference routes on LitServe, with its documented batching (LitAPI max_batch_size,
batch_timeout). Run in the peers' venv from the repository root; bench_peers.py starts it:

    PYTHONPATH=. .venv-peers/bin/python -m bench.peers.litserve_app MODEL.onnx --port 3300 \
        --api-servers 2 --workers 1

POST /predict  JSON {"images": [N][3][32][32]}  -> [N][2] probabilities (as ours)
POST /classify multipart, JPEG files in 'images' -> {"predictions": [{label, probabilities}]}
GET  /health   200 once every inference worker has loaded the model (LitServe's own route)

LitServe decodes in its inference workers (decode_request), after the API server has parsed
the JSON or the multipart form: that split is LitServe's design, kept as documented.
"""

from __future__ import annotations

import argparse
import signal

import litserve as ls
import numpy as np
from fastapi import HTTPException

from bench.peers.common import Model, classify_reply, images_from_files, images_from_json
from service.errors import BadInput


class PredictAPI(ls.LitAPI):
    def __init__(self, model_path: str, **kwargs):
        super().__init__(**kwargs)
        self.model_path = model_path

    def setup(self, device):
        self.model = Model(self.model_path)

    def decode_request(self, request):
        try:
            return self.decode(request)
        except BadInput as e:
            raise HTTPException(e.status, str(e)) from None

    def decode(self, request) -> np.ndarray:
        return images_from_json(request)

    def batch(self, inputs):
        return inputs  # requests carry different image counts: predict concatenates them

    def predict(self, x):
        if isinstance(x, np.ndarray):  # max_batch_size=1: LitServe does not batch at all
            return self.model.probs_split([x])[0]
        return self.model.probs_split(x)

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        return output.tolist()


class ClassifyAPI(PredictAPI):
    def decode(self, request) -> np.ndarray:
        # LitServe hands multipart bodies over as Starlette FormData of UploadFiles.
        return images_from_files([f.file.read() for f in request.getlist("images")])

    def encode_response(self, output):
        return classify_reply(output)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="path of the convnet's model.onnx")
    p.add_argument("--port", type=int, default=3300)
    p.add_argument("--api-servers", type=int, default=1, help="LitServe num_api_servers")
    p.add_argument("--workers", type=int, default=1, help="LitServe workers_per_device")
    p.add_argument("--max-batch-size", type=int, default=32)
    # > 0: with 0, LitServe's batch collector polls its queue without ever blocking.
    p.add_argument("--batch-timeout", type=float, default=0.005, help="seconds")
    p.add_argument("--fast-queue", action="store_true", help="ZeroMQ between the processes")
    args = p.parse_args()
    batching = {"max_batch_size": args.max_batch_size, "batch_timeout": args.batch_timeout}
    apis = [PredictAPI(args.model, api_path="/predict", **batching),
            ClassifyAPI(args.model, api_path="/classify", **batching)]
    server = ls.LitServer(apis, accelerator="cpu", devices=1, workers_per_device=args.workers,
                          fast_queue=args.fast_queue)
    # LitServe shuts its processes down on Ctrl+C only; make SIGTERM (bench_peers' stop) the same.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=args.api_servers,
               log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
