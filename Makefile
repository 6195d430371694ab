# Two entry points for a fresh machine: `make demo` (set up + main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data/movielens
REPORT ?= reports/quick

.PHONY: setup demo demo-images test lint docs results results-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/duet prepare --source movielens-small --out $(DATA) --overwrite
	$(BIN)/duet compare --data $(DATA) --backbones sasrec --seeds 1 --quick --out $(REPORT) --overwrite

# The image task: a fleet of devices from sklearn's bundled digits, one seed, short training.
demo-images: setup
	$(BIN)/duet prepare --source digits-fleet --out data/digits-fleet --overwrite
	$(BIN)/duet compare --data data/digits-fleet --quick --threads 1 --out reports/digits-quick --overwrite

# --durations=25: the slowest tests, to keep the suite under 10 minutes on a 2-core machine.
# tests/test_limits_shared.py needs redis-server (apt-get install -y redis-server; .ci/run installs it):
# without it those tests skip, saying so in the summary (-ra); with CI=true they fail instead.
test: setup
	$(BIN)/ruff check src tests benchmarks experiments scripts examples
	$(BIN)/lint-imports
	$(BIN)/python scripts/results.py --check
	$(MAKE) --no-print-directory docs
	$(BIN)/pytest -q --durations=25

lint: setup
	$(BIN)/ruff check src tests benchmarks experiments scripts examples
	$(BIN)/lint-imports

# The documentation site (mkdocs.yml, docs/): built with --strict (a broken link, a page missing
# from the nav or a nav entry without a page fails) into a temporary folder; `mkdocs serve` to read it.
docs: setup
	site=$$(mktemp -d) && NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $$site; \
	status=$$?; rm -rf $$site; exit $$status

# Every table and quoted figure in README.md and the site's pages from the committed result files:
# `results` rewrites the generated blocks and inline figures, `results-check` fails on any difference,
# on a decimal or percentage outside a marker, and on a stored summary its raw values contradict
# (it recomputes them with duet.report.stats, so it runs with the venv's python).
results: setup
	$(BIN)/python scripts/results.py

results-check: setup
	$(BIN)/python scripts/results.py --check

clean:
	rm -rf $(VENV) data reports runs
