# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON     ?= python3
VENV       ?= .venv
# A bare `torch` requirement can pull a multi-GB CUDA build; install the pinned CPU build first.
TORCH_SPEC ?= torch==2.13.0
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.trainlab-installed

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
# extra, never the runtime; torch is named in the same command so pip keeps the pinned build; Cockpit and
# BackPACK without their dependencies, which would let pip replace torch (pyproject.toml).
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" -e ".[bench]"
	$(BIN)/python -m pip install --quiet --no-deps "cockpit-for-pytorch>=1.0.2" "backpack-for-pytorch>=1.7"
	$(BIN)/python benchmarks/import_time.py
	$(BIN)/python benchmarks/trainer_overhead.py
	$(BIN)/python benchmarks/optim_step.py
	$(BIN)/python benchmarks/batchnorm.py
	$(BIN)/python benchmarks/curvature.py
	$(BIN)/python benchmarks/curvature_scale.py
	$(BIN)/python benchmarks/hvp_batching.py
	$(BIN)/python benchmarks/analysis_memory.py
	$(BIN)/python benchmarks/sharpness_tracking.py
	$(BIN)/python benchmarks/doctor_scenarios.py
	$(BIN)/python benchmarks/monitor_overhead.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
