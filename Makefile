# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON     ?= python3
VENV       ?= .venv
# A bare `torch` requirement can pull a multi-GB CUDA build; install the pinned CPU build first.
TORCH_SPEC ?= torch==2.13.0
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.trainlab-installed
# The peers live in their own environment: BackPACK (curvlinops) pulls a torchvision whose wheel does
# not match the CPU torch, and a torchvision that fails to import breaks `import transformers` too, so
# it must never enter the environment `make test` runs the integrations in.
BENCH_VENV ?= .venv-bench
BENCH_BIN  := $(BENCH_VENV)/bin
BENCH_STAMP := $(BENCH_VENV)/.trainlab-installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	# the integrations' frameworks too, so CI covers trainlab.integrations (issue 14)
	$(BIN)/python -m pip install --quiet -e ".[dev,lightning,hf,tensorboard]"
	touch $@

demo: $(STAMP)
	$(BIN)/trainlab demo --out report

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Peers (PyHessian, hessian-eigenthings, curvlinops, SciPy, Cockpit) and torchvision come from the bench
# extra, never the runtime, installed in $(BENCH_VENV) (above); torch is named in the same command so pip
# keeps the pinned build; Cockpit and BackPACK without their dependencies, which would let pip replace
# torch (pyproject.toml). benchmarks/curvature_scale.py loads the mismatched torchvision's Python models.
# benchmarks/integrations_overhead.py needs Lightning and transformers: run it with $(BIN)/python.
$(BENCH_STAMP): pyproject.toml
	test -x $(BENCH_BIN)/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BENCH_BIN)/python -m pip install --quiet "$(TORCH_SPEC)" -e ".[bench]"
	$(BENCH_BIN)/python -m pip install --quiet --no-deps "cockpit-for-pytorch>=1.0.2" "backpack-for-pytorch>=1.7"
	touch $@

bench: $(BENCH_STAMP)
	$(BENCH_BIN)/python benchmarks/import_time.py
	$(BENCH_BIN)/python benchmarks/trainer_overhead.py
	$(BENCH_BIN)/python benchmarks/optim_step.py
	$(BENCH_BIN)/python benchmarks/batchnorm.py
	$(BENCH_BIN)/python benchmarks/curvature.py
	$(BENCH_BIN)/python benchmarks/curvature_scale.py
	$(BENCH_BIN)/python benchmarks/hvp_batching.py
	$(BENCH_BIN)/python benchmarks/analysis_memory.py
	$(BENCH_BIN)/python benchmarks/sharpness_tracking.py
	$(BENCH_BIN)/python benchmarks/doctor_scenarios.py
	$(BENCH_BIN)/python benchmarks/monitor_overhead.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) runs build *.egg-info src/*.egg-info
