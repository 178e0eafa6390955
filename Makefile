# Every target creates .venv first when it is missing (or when pyproject.toml changed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Model and recipe for `make train` / `make export`, e.g. `make train MODEL=net_res RECIPE=book`.
MODEL ?= net
RECIPE ?= book

.PHONY: venv test serve models train export bench lint clean peers-venv bench-peers

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar off -e ".[dev]"
	touch $@

venv: $(STAMP)

test: venv
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check .

train: venv
	$(PY) -m models.train --model $(MODEL) --recipe $(RECIPE)

export: venv
	$(PY) -m export runs/$(MODEL).pt --register

# The two served models, trained, exported and registered once: the convnet with the fast
# recipe and the dense baseline with the book's. Skipped when the store already has them.
models: venv
	@for spec in net:fast dense:book; do \
	  name=$${spec%%:*}; recipe=$${spec##*:}; \
	  if $(VENV)/bin/bentoml models get cifar2-$$name:latest >/dev/null 2>&1; then \
	    echo "cifar2-$$name:latest is registered"; continue; fi; \
	  test -f runs/$$name.pt || $(PY) -m models.train --model $$name --recipe $$recipe || exit $$?; \
	  $(PY) -m export runs/$$name.pt --register || exit $$?; \
	done

serve: models
	$(VENV)/bin/bentoml serve

# The service's image from the registered models (docs/deploy.md): `make container` gives
# cifar2:cpu (bentofile.cpu.yaml), `make container GPU=1` cifar2:gpu (bentofile.yaml).
# `make container-test` builds one from two tiny models and checks it running, on a machine
# with nothing set up (it installs and starts Docker): scripts/container_test.py.
.PHONY: container container-test
container: models
	bash scripts/container_build.sh $(if $(filter 1,$(GPU)),gpu,cpu)

container-test: venv
	$(PY) scripts/container_test.py $(if $(filter 1,$(GPU)),--gpu)

# LitServe and Ray Serve for bench/peers/bench_peers.py, in a venv of their own: their
# FastAPI / Starlette / uvicorn pins can clash with BentoML's.
PEERS_VENV := .venv-peers
$(PEERS_VENV)/.installed: bench/peers/requirements.txt
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --progress-bar off -r bench/peers/requirements.txt
	touch $@

peers-venv: $(PEERS_VENV)/.installed

bench-peers: models peers-venv
	$(PY) -m bench.peers.bench_peers

# The GPU path in one command (docs/gpu.md). Where PyPI and runs/{net,dense}.pt are:
#   make wheelhouse PYTHON_VERSION=3.12 && make gpu-bundle   -> wheelhouse/carry-N/, gpu-bundle/
# on the GPU machine, with those carried (no .venv, torch or registry there): make gpu-check
# anywhere, without a GPU (small sizes; `make test` runs it):    make gpu-check DEVICE=cpu
DEVICE ?= cuda
PYTHON_VERSION ?= 3.12
GPU_BUNDLE ?= gpu-bundle
GPU_SITE := $(CURDIR)/.gpu-site
.PHONY: wheelhouse gpu-bundle gpu-check

wheelhouse: venv
	$(PY) -m bench.gpu.wheelhouse --python-version $(PYTHON_VERSION)

gpu-bundle: venv
	@for name in net dense; do \
	  test -f runs/$$name.pt || { echo "runs/$$name.pt is missing: make models first" >&2; exit 2; }; \
	  $(PY) -m export runs/$$name.pt --fp16 --quiet || exit $$?; \
	done
	$(PY) -m bench.gpu.pack artifacts/net artifacts/dense --out $(GPU_BUNDLE)

ifeq ($(DEVICE),cpu)
gpu-check: venv
	$(PY) -m bench.gpu_check --device cpu --bundle $(GPU_BUNDLE) $(if $(GPU_OUT),--out $(GPU_OUT))
else
gpu-check:
	$(PYTHON) bench/gpu/install.py --target $(GPU_SITE)
	-PYTHONPATH=$(GPU_SITE) $(PYTHON) -m bench.gpu.probe --device $(DEVICE) --bundle $(GPU_BUNDLE) $(if $(GPU_OUT),--out $(GPU_OUT))
	-PYTHONPATH=$(GPU_SITE) $(PYTHON) -m bench.gpu.shapes --device $(DEVICE) --bundle $(GPU_BUNDLE) $(if $(GPU_OUT),--out $(GPU_OUT))
	PYTHONPATH=$(GPU_SITE) $(PYTHON) -m bench.gpu_check --device $(DEVICE) --bundle $(GPU_BUNDLE) $(if $(GPU_OUT),--out $(GPU_OUT))
endif

clean:
	rm -rf $(VENV) runs artifacts data
