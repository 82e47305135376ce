# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench soak clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)  ## the demo: a local HubSpot plus the router on configs/demo.yaml
	$(BIN)/router demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: $(STAMP)  ## P1-P5; P1 needs wrk (apt-get install wrk)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/hubspot_efficiency.py
	$(BIN)/python bench/delivery.py latency
	$(BIN)/python bench/delivery.py memory

soak: $(STAMP)  ## the long versions: 20 SIGKILL cycles, a 5M-event backlog
	ROUTER_SOAK_CYCLES=20 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_reliability_crash.py
	$(BIN)/python bench/delivery.py memory --events 5000000 --small 1000000

clean:
	rm -rf $(VENV) data .pytest_cache
