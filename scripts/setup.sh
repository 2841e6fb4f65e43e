#!/usr/bin/env bash
# Set up vh_lens on a fresh machine: a virtual environment in .venv with everything installed
# (the package, its test tools and its docs tools: `.venv/bin/mkdocs build --strict` builds the site).
# torch is pinned to 2.13.0 first: that is the CPU wheel; an unpinned request pulls multi-GB CUDA builds.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[test,docs]"
