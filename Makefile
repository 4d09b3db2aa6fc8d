# `make demo`: set up .venv and harmonize the bundled example; `make test`: set up .venv, lint, run the tests and
# the docstring examples.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test clean

$(BIN)/vharm: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU build on disk. An unpinned torch would pull a multi-GB CUDA build.
	# ray (optional, `vharm batch --ray`) is installed for its tests; it needs neither torch nor numpy.
	# fastapi, uvicorn, python-multipart: `vharm serve` (the `serve` extra); httpx2 (FastAPI's test client) and
	# playwright (the browser test, driving the system's chromium: no browser download) are for its tests.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet kornia==0.9.0 av==18.1.0 opencv-python-headless==5.0.0.93 safetensors==0.8.0 \
		'numpy>=2,<3' tqdm pillow ai-edge-litert==2.3.0 pytest ruff==0.17.6 ray==2.60.0 \
		fastapi==0.165.0 uvicorn==0.54.0 python-multipart==0.0.34 httpx2==2.16.2 playwright==1.65.2
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(BIN)/vharm

demo: $(BIN)/vharm
	$(BIN)/vharm demo -o demo-output

test: $(BIN)/vharm
	$(BIN)/ruff check vharm tests experiments
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo-output
