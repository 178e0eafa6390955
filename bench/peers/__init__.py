"""Peers side by side: the same model.onnx served by LitServe and Ray Serve, next to ours.

Benchmark only. The peers run in their own virtual environment (``make peers-venv``, from
bench/peers/requirements.txt), because LitServe and Ray pin FastAPI/Starlette/uvicorn versions
that can clash with BentoML's. The runner is bench/peers/bench_peers.py.
"""
