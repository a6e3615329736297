# fogline developer targets. Everything installs into ./.venv on first use and is skipped afterwards
# (a stamp file records which pyproject.toml the environment was built from).
#
#   make demo   set up, then run `fogline demo` (cloud + network proxy + agent on loopback)
#   make test   set up, then run the whole test suite (the MLServer tests build .venv-mlserver on first use)
#   make lint   ruff
#   make proto  regenerate the committed gRPC stubs
#   make bench  routing benchmark (bench/results/routing.md); bench-models, bench-cloud, bench-agent

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch is pinned to the CPU build that lies on this machine's disk; an unpinned torch pulls CUDA.
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# MLServer (a real third-party v2 server, used to prove "any v2 server as the cloud") lives in its own
# environment: its dependency pins are not fogline's. `make test` does not build it: the MLServer tests
# do on first use (tests/integration/conftest.py), with the same stamp as this target.
MLSTAMP := .venv-mlserver/.installed-$(shell cat scripts/setup_mlserver.sh pyproject.toml | sha256sum | cut -c1-12)

.PHONY: mlserver setup test demo lint proto bench bench-models bench-cloud bench-agent models clean

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	@echo ">> installing fogline and its extras into $(VENV) (first run only)"
	$(PY) -m pip install --quiet --progress-bar off $(TORCH)
	$(PY) -m pip install --quiet --progress-bar off -e '.[cloud,models,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

$(MLSTAMP): scripts/setup_mlserver.sh pyproject.toml
	bash scripts/setup_mlserver.sh
	rm -f .venv-mlserver/.installed-*
	touch $@

mlserver: $(MLSTAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/fogline demo

models: $(STAMP)
	$(VENV)/bin/fogline models build

lint: $(STAMP)
	$(PY) -m ruff check .

proto: $(STAMP)
	$(PY) scripts/gen_proto.py

bench: $(STAMP)
	$(PY) -m bench.routing

bench-models: $(STAMP)
	$(PY) -m bench.models

bench-cloud: $(STAMP)
	$(PY) -m bench.cloud

bench-agent: $(STAMP)
	$(PY) -m bench.agent

clean:
	rm -rf $(VENV) .venv-mlserver .cache .pytest_cache .ruff_cache build *.egg-info src/*.egg-info
