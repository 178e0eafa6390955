"""The OpenAPI document (/docs.json, the page at /) as the service really behaves.

BentoML writes the document from the ``@bentoml.api`` signatures. That leaves out what the
request layer (service/routes.py) does in front of them: the .npy and multipart forms of
/predict, the one error shape ``{"error": ..., "index"?}`` and the statuses it comes with, the
X-Batch-Size / X-Queue-Ms headers, and the Open Inference Protocol routes. They are added here,
so that clients, the page and the schemathesis run read one truthful contract.
"""

from __future__ import annotations

import copy
import json

from service import v2

ERROR = {"$ref": "#/components/schemas/Error"}
ERROR_SCHEMA = {
    "type": "object", "required": ["error"], "additionalProperties": False,
    "properties": {"error": {"type": "string", "description": "what is wrong, and the fix"},
                   "index": {"type": "integer", "description": "the image it concerns"}},
}
# status -> why, for the inference routes
ERRORS = {
    "400": "bad input: no or corrupt images, a tensor of the wrong shape, dtype or values, "
           "an unknown model, malformed JSON or form",
    "404": "unknown model, version or route",
    "405": "wrong method",
    "408": "the body was still arriving CIFAR2_BODY_TIMEOUT_S after it began",
    "413": "too many images, a body over the size limit, or a decompression bomb",
    "415": "a Content-Type the route does not take",
    "500": "the model failed (logged with the request id)",
    "503": "not ready, draining or overloaded; retry after Retry-After seconds",
    "504": "the model took longer than CIFAR2_REQUEST_TIMEOUT_S",
}
BATCH_HEADERS = {
    "X-Batch-Size": {"description": "images in the model call this request rode in",
                     "schema": {"type": "integer"}},
    "X-Queue-Ms": {"description": "milliseconds this request waited for that call",
                   "schema": {"type": "number"}},
}
DESCRIPTION = """The chapter-8 convnet of *Deep Learning with PyTorch* next to the chapter-7
dense baseline, on CIFAR-2 (airplane vs bird), served with ONNX Runtime.

Try both models side by side in the browser: **[the web page at /ui](ui)**.

Routes: `/classify` and `/compare` take image files; `/predict` takes uint8 tensors
(JSON, `.npy`); the Open Inference Protocol (KServe V2) is under `/v2` (JSON tensors, and
Triton's binary tensor extension, which `tritonclient` uses). Every error is
`{"error": "..."}`. Live settings, models and provider: `GET /info`.
"""


def openapi_spec(bentoml_spec):
    """BentoML's OpenAPISpecification -> ours, of the same type (``bentoml build`` writes it
    into the Bento too)."""
    from bentoml._internal.service.openapi.specification import OpenAPISpecification
    from bentoml._internal.utils.cattr import bentoml_cattr

    as_json = json.loads(json.dumps(bentoml_spec.asdict()))  # status codes as strings
    return bentoml_cattr.structure(document(as_json), OpenAPISpecification)


def document(spec: dict) -> dict:
    """BentoML's document (a JSON dict) -> the document of the service as it behaves."""
    spec = copy.deepcopy(spec)
    spec["info"]["description"] = DESCRIPTION
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name in ("InvalidArgument", "NotFound", "InternalServerError"):
        schemas.pop(name, None)
    schemas["Error"] = ERROR_SCHEMA
    for path in ("/classify", "/compare", "/predict"):
        op = spec["paths"][path]["post"]
        op["responses"] = {"200": {**op["responses"]["200"], "headers": BATCH_HEADERS},
                           **_errors("400", "408", "413", "415", "500", "503", "504")}
    predict = spec["paths"]["/predict"]["post"]
    predict["responses"]["200"]["content"]["application/json"]["schema"] = _matrix(2)
    tensor = {"type": "string", "format": "binary",
              "description": "an .npy file (numpy.save) of uint8 [N,3,32,32]"}
    predict["requestBody"]["content"].update({
        "application/x-npy": {"schema": tensor},
        "multipart/form-data": {"schema": {"type": "object", "required": ["images"],
                                           "properties": {"images": tensor}}},
    })
    for path in ("/classify", "/compare"):  # at least one image
        form = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]
        form["schema"]["required"] = ["images"]
        form["schema"]["properties"]["images"]["minItems"] = 1
        form["schema"]["properties"]["images"].pop("default", None)
    spec["paths"].update(_v2_paths())
    spec.setdefault("tags", []).append(
        {"name": "Open Inference Protocol (V2)",
         "description": "KServe V2 / Triton HTTP API: models `convnet` and `dense`"})
    return spec


def _errors(*statuses: str) -> dict:
    return {s: {"description": ERRORS[s], "content": {"application/json": {"schema": ERROR}}}
            for s in statuses}


def _matrix(columns: int | None = None) -> dict:
    row = {"type": "array", "items": {"type": "number"}}
    if columns:
        row.update(minItems=columns, maxItems=columns)
    return {"type": "array", "items": row}


def _v2_paths() -> dict:
    tag = ["Open Inference Protocol (V2)"]
    model = {"name": "model_name", "in": "path", "required": True,
             "schema": {"type": "string", "enum": ["convnet", "dense"]}}
    version = {"name": "model_version", "in": "path", "required": True,
               "schema": {"type": "string"}, "description": "the BentoML store version"}
    tensor = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "data": {"type": "array"}, "parameters": {"type": "object"}}}
    infer_request = {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": tensor, "minItems": 1, "maxItems": 1,
                   "description": f"one tensor: '{v2.INPUT}' UINT8 [N,3,32,32]"},
        "outputs": {"type": "array", "items": {
            "type": "object", "required": ["name"],
            "properties": {"name": {"type": "string", "enum": list(v2.OUTPUTS)},
                           "parameters": {"type": "object"}}}}}}
    infer_reply = {"type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"},
        "id": {"type": "string"}, "outputs": {"type": "array", "items": tensor}}}
    obj = {"type": "object"}

    def get(summary: str, schema: dict, *errors: str, params=()) -> dict:
        return {"get": {"tags": tag, "summary": summary, "parameters": list(params),
                        "responses": {"200": {"description": "OK", "content": {
                            "application/json": {"schema": schema}}}, **_errors(*errors)}}}

    def infer(params) -> dict:
        return {"post": {
            "tags": tag, "summary": "Run a model (V2 infer). Binary tensors: send the JSON "
            "header, then the raw bytes, with Inference-Header-Content-Length.",
            "parameters": list(params),
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": infer_request},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {"200": {"description": "the outputs, JSON or JSON header + binary",
                                  "headers": BATCH_HEADERS,
                                  "content": {"application/json": {"schema": infer_reply},
                                              "application/octet-stream": {"schema": {
                                                  "type": "string", "format": "binary"}}}},
                          **_errors("400", "404", "408", "413", "415", "500", "503", "504")}}}

    paths = {
        "/v2": get("Server metadata", obj),
        "/v2/health/live": get("Liveness", obj),
        "/v2/health/ready": get("Readiness: 200 once both models are loaded", obj, "503"),
    }
    for prefix, params in (("/v2/models/{model_name}", (model,)),
                           ("/v2/models/{model_name}/versions/{model_version}",
                            (model, version))):
        paths[prefix] = get("Model metadata", obj, "404", "503", params=params)
        paths[prefix + "/ready"] = get("Model readiness", obj, "404", "503", params=params)
        paths[prefix + "/infer"] = infer(params)
    return paths
