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

.PHONY: venv test test-slow bench demo clean constraints peers-venv bench-peers

venv: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev,cluster]'
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
	$(PY) -m pip install --quiet -e '.[dev,cluster]'
	{ sed -n '1,3p' $(CONSTRAINTS); $(PY) -m pip freeze --exclude-editable | \
	  grep -viE '^(torch|triton|nvidia-|sympy|mpmath|networkx|filelock|jinja2|markupsafe|fsspec|typing.extensions|setuptools|pip)[=-]'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

# The association peers (boxmot's box trackers) in a venv of their own, for
# tests/benchmarks/bench_association_peers.py only: not part of `make test`. The CPU torch first
# (as above), then boxmot without its dependencies (torchvision, timm, ultralytics… are for its
# detectors and ReID, which the benchmark does not use) and the small packages its box trackers
# import; tubeflow's own generator, tracker and metrics come from the work tree (PYTHONPATH), with
# tubeflow's dependencies less torch and Ray (read from pyproject.toml, so the list stays in step).
PEERS_VENV ?= .venv-peers
PEERS_PY    = $(PEERS_VENV)/bin/python
PEERS_STAMP = $(PEERS_VENV)/.peers-installed
TUBEFLOW_LIGHT_DEPS = $(PEERS_PY) -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if not d.startswith(('torch', 'ray'))))"

peers-venv: $(PEERS_STAMP)

$(PEERS_STAMP): pyproject.toml Makefile
	test -x $(PEERS_PY) || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_PY) -m pip install --quiet --upgrade pip
	$(PEERS_PY) -c "import torch" 2>/dev/null || $(PEERS_PY) -m pip install --quiet torch==2.13.0
	$(PEERS_PY) -m pip install --quiet --no-deps boxmot==25.0.0
	$(TUBEFLOW_LIGHT_DEPS) > $(PEERS_VENV)/tubeflow-deps.txt
	$(PEERS_PY) -m pip install --quiet -c $(CONSTRAINTS) -r $(PEERS_VENV)/tubeflow-deps.txt \
	  'filterpy>=1.4.5,<2' 'lapx>=0.5.5,<1' scikit-learn pandas platformdirs rich click typing-extensions pyyaml pytest
	touch $(PEERS_STAMP)

bench-peers: $(PEERS_STAMP)
	PYTHONPATH=$(CURDIR) $(PEERS_PY) tests/benchmarks/bench_association_peers.py

clean:
	rm -rf $(VENV) $(PEERS_VENV) .pytest_cache build *.egg-info
