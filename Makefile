# Two commands for a fresh machine:  make demo  |  make test
# Both create .venv and install kiln into it first (torch 2.14.1 / torchvision 0.29.1).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kiln-installed
EXTRAS ?= dev,timm,export,serve,wandb,tune

.PHONY: demo test test-fast lint bench bench-photos bench-own-data bench-audit bench-gpu gpu-wheels data clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kiln train -c configs/digits.yaml

test: $(STAMP)
	$(PY) -m pytest -q

# The edit-test loop: unit tests only (no subprocess, DDP, real-data or long training tests), under a minute.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

# Unpack ../shared/data's CIFAR-10, MNIST, the tutorial's ant/bee photos, imagenette and neu-steel into
# data/ (git-ignored), with the ImageNet weights of tf_efficientnet_lite0 the photo recipes start from.
data:
	mkdir -p data
	test -d data/cifar10 || tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C data/
	test -d data/mnist || tar -xzf ../shared/data/mnist-png.tar.gz -C data/
	test -d data/hymenoptera_data || tar -xzf ../shared/data/hymenoptera-jpeg.tar.gz -C data/
	test -d data/imagenette || tar -xzf ../shared/data/imagenette-jpeg.tar.gz -C data/
	test -d data/neu-steel || tar -xzf ../shared/data/neu-steel-jpeg.tar.gz -C data/
	test -f data/tf_efficientnet_lite0_imagenet.safetensors || cp ../shared/data/tf_efficientnet_lite0_imagenet.safetensors data/


bench: $(STAMP) data
	$(PY) -m benchmarks.cpu_overhead
	$(PY) -m benchmarks.cache_speed
	$(PY) -m benchmarks.cpu_time_to_accuracy
	$(PY) -m benchmarks.stream_speed
	$(PY) -m benchmarks.decode_photos

# The photo recipes against the transfer-learning tutorial (~15 min), then kiln serve's throughput
bench-photos: $(STAMP) data
	$(PY) -m benchmarks.transfer_photos
	$(PY) -m benchmarks.serve_throughput

# Folders ImageNet does not know (neu-steel, MNIST digits, mosaics) and two it does, against a linear probe
# and fastai (~1.5 h on 2 cores). fastai is a benchmark-only dependency: installed here without its own
# pins, which would replace torch.
# kiln audit against faults put into imagenette and neu-steel photos, its time on all of imagenette, and
# CIFAR-10's test images with a twin in train (~45 min on 2 cores)
bench-audit: $(STAMP) data
	$(PY) -m benchmarks.audit

bench-own-data: $(STAMP) data
	$(PY) -m pip install -q --no-deps fastai fastcore fastdownload fasttransform 'fastprogress<1.1'
	$(PY) -m pip install -q 'plum-dispatch<2.10'
	$(PY) -m benchmarks.own_data

# On a machine with one CUDA GPU (no network, kiln not installed): see benchmarks/bench_gpu.sh. Run
# `make gpu-wheels` here first (with network) and carry .whl and .gpu-data to it.
bench-gpu:
	bash benchmarks/bench_gpu.sh

gpu-wheels:
	mkdir -p .whl .gpu-data
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
	    pydantic pydantic-core annotated-types typing-inspection airbench
	cp ../shared/data/cifar10-jpeg.tar.gz ../shared/data/tf_efficientnet_lite0_imagenet.safetensors .gpu-data/

clean:
	rm -rf $(VENV) runs .pytest_cache
