# Two entry points for a fresh machine: `make demo` and `make test`.
# The first use builds .venv with a CPU build of torch pinned, so no CUDA packages are pulled.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
DEMO_DIR ?= demo_out

.PHONY: demo test lint format clean chromium

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/npva demo --out $(DEMO_DIR)

# The viewer's browser test needs Chromium: installed here when apt-get can, else that test is skipped.
chromium:
	@command -v chromium >/dev/null || ! command -v apt-get >/dev/null || \
		apt-get install -y -q chromium >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1) || \
		echo "chromium could not be installed: the viewer's browser test will be skipped"

test: $(BIN)/.installed chromium
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 -m "not gpu"

format: $(BIN)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(DEMO_DIR)
