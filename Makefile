# qdnn developer commands. `make quickstart` and `make test` install on first use.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install test test-kernels test-all quickstart bench ddp-smoke device-site device-data device-data-full device-check device-table clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The tests that compare two float computations, again on other kernels than this CPU's
# best: another instruction set and one thread (what another machine's sums look like).
KERNELS ?= ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=1
test-kernels: $(STAMP)
	env $(KERNELS) $(BIN)/python -m pytest -q -m 'numerics and not slow'

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

quickstart: $(STAMP)
	$(BIN)/qdnn train quickstart

bench: $(STAMP)
	$(BIN)/python -m qdnn_cli.bench

# Two CPU processes (gloo) on the quickstart: what `torchrun --nproc_per_node=N` does on GPUs.
ddp-smoke: $(STAMP)
	$(BIN)/torchrun --standalone --nproc_per_node=2 -m qdnn_cli.cli train quickstart trainer.device=cpu trainer.epochs=2

# On a GPU machine whose Python has torch but not hydra/omegaconf: copy those pure-Python
# packages from this venv into .site/ (ignored by git), then run the prepared CUDA check.
device-site: $(STAMP)
	rm -rf .site && mkdir .site
	cd $$($(BIN)/python -c "import site; print(site.getsitepackages()[0])") && cp -r hydra omegaconf antlr4 $(CURDIR)/.site/

device-check:
	bash scripts/device_check.sh

# The images a small-budget table trains on (45 % of cifar100-dev/train, one subset for
# every seed) plus val/, as one zip under .gpu/ (ignored by git) for a GPU machine that
# cannot read ../shared: carry .site and .gpu, then run `make device-table` there.
DEV_DATA ?= ../shared/data/cifar100-dev
device-data: $(STAMP)
	$(BIN)/python scripts/device_data.py pack $(DEV_DATA) .gpu/cifar100-dev --fraction 0.45 --subset-seed 0

device-table:
	bash scripts/gpu_table.sh

# The whole training split + val/ in two archives, one per device call (scripts/gpu_first.sh:
# call 1 carries .site and part 1 and runs `bench`, call 2 carries .site and part 2 and runs `train`).
device-data-full: $(STAMP) device-site
	$(BIN)/python scripts/device_data.py pack $(DEV_DATA) .gpu/cifar100-dev --fraction 1 --parts 2

clean:
	rm -rf build dist *.egg-info .pytest_cache
