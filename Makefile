# Runyard: `make run` starts the console on its embedded default; `make test` passes the tests.
# Both set up what they need first and can be run again at any time.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
STAMP  := $(VENV)/.installed

# The tests talk to the real PostgreSQL and Redis; these are this machine's.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/runyard
TEST_REDIS_URL    ?= redis://127.0.0.1:6379/15

.PHONY: setup run test bench bench-peers images clean cluster cluster-lab cluster-down

setup: $(STAMP) static/vendor/.copied

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Front-end libraries come from npm (package-lock.json), copied where the pages load them.
static/vendor/.copied: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	mkdir -p static/vendor
	cp node_modules/htmx.org/dist/htmx.min.js node_modules/plotly.js-basic-dist-min/plotly-basic.min.js static/vendor/
	cp node_modules/@xterm/xterm/lib/xterm.mjs node_modules/@xterm/xterm/css/xterm.css node_modules/@xterm/addon-fit/lib/addon-fit.mjs static/vendor/
	touch $@

# Images are built locally (there is no registry to pull from); skipped without an engine.
images:
	@if docker info >/dev/null 2>&1; then ./images/build.sh; else echo "no Docker engine reachable: runs will use local processes"; fi

run: setup images
	$(BIN)/python manage.py migrate --noinput -v0
	$(BIN)/python manage.py welcome --url http://127.0.0.1:$(PORT)/
	$(BIN)/daphne -b 127.0.0.1 -p $(PORT) dashboard.asgi:application

test: setup images
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} \
	REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
	SECRET_KEY=$${SECRET_KEY:-runyard-tests-only} \
	RUNYARD_GIT_ALLOW_FILE=1 \
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup images
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)_bench} \
	SECRET_KEY=$${SECRET_KEY:-runyard-bench-only} \
	$(BIN)/python -m benchmarks

# Runyard beside MLflow (installed once into var/bench/mlflow-venv) on metric ingest and a 1M-point read.
bench-peers: setup images
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)_bench} \
	SECRET_KEY=$${SECRET_KEY:-runyard-bench-only} \
	$(BIN)/python -m benchmarks.peers

# A Docker Swarm of NODES nodes on this machine, for the swarm executor (lab/swarm.sh; as root).
NODES ?= 3
cluster-lab:
	NODES=$(NODES) lab/swarm.sh up

# The console as `make run` starts it, with the lab registered as cluster `lab` and its
# presets cpu-1 and cpu-2: a run file with `resources: {cluster: lab, preset: cpu-1}` runs there.
cluster: setup images cluster-lab
	$(BIN)/python manage.py migrate --noinput -v0
	$(BIN)/python manage.py register_cluster lab --lab var/lab --preset cpu-1:1:1024 --preset cpu-2:2:2048
	$(BIN)/python manage.py welcome --url http://127.0.0.1:$(PORT)/
	$(BIN)/daphne -b 127.0.0.1 -p $(PORT) dashboard.asgi:application

cluster-down:
	lab/swarm.sh down

clean:
	rm -rf $(VENV) *.egg-info
