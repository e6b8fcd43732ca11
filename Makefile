# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv idempotently. torch==2.13.0 (a local CPU build) is installed first when
# the venv has no torch: any other torch spec would pull gigabytes of CUDA wheels. A GPU user
# installs a CUDA build of torch into .venv first and this Makefile leaves it alone.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.tubeflow-installed
# Known-good versions: keeps installs reproducible and spares pip's resolver a long
# backtrack (moto's newest boto3 vs. the botocore pin of s3fs's aiobotocore).
CONSTRAINTS = .ci/constraints.txt
DEMO   ?= /tmp/tubeflow-demo

.PHONY: venv test test-slow bench demo clean constraints

venv: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) -m pytest -q -s -m benchmark tests/benchmarks

demo: $(STAMP)
	$(VENV)/bin/tubeflow demo --out $(DEMO)

constraints: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	{ sed -n '1,3p' $(CONSTRAINTS); $(PY) -m pip freeze --exclude-editable | \
	  grep -viE '^(torch|triton|nvidia-|sympy|mpmath|networkx|filelock|jinja2|markupsafe|fsspec|typing.extensions|setuptools|pip)[=-]'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
