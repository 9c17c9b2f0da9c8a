# Two commands on a fresh machine (Python 3.11): `make demo` and `make test`.
# Each creates or reuses .venv/ and installs what the project needs.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
BUNDLE := monai_bundle
DEMO_OUT := demo_output

.PHONY: demo test bench clean

$(INSTALLED): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=python3"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	# pydicom of 3D Slicer 5.10, beside the pinned one: Testing/test_reader_pydicom2.py reads the DICOMs with both
	$(BIN)/python -m pip install --quiet --no-deps --upgrade --target $(VENV)/pydicom2 pydicom==2.4.4
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/python -m monai.bundle run --config_file $(BUNDLE)/configs/inference.json \
		--input_dir $(BUNDLE)/sample_data --output_dir $(DEMO_OUT)
	@echo "Segmentations of $(BUNDLE)/sample_data written to $(abspath $(DEMO_OUT))/"

test: $(INSTALLED)
	$(BIN)/python -m pytest -q -p no:cacheprovider Testing

bench: $(INSTALLED)
	$(BIN)/python benchmarks/benchmark.py

clean:
	rm -rf $(DEMO_OUT) $(BUNDLE)/eval
