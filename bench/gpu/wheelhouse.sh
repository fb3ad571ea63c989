#!/usr/bin/env bash
# Prepare wheelhouse/ (git-ignored) for bench/gpu/check.sh on a machine that reaches PyPI: exactly the packages of
# bench/gpu/requirements.txt, no dependencies pulled in, wheels for CPython 3.12 (the GPU machine) and 3.11 (the
# rehearsal here), plus hatchling and its needs to build this plugin offline. deepspeed ships only as an sdist:
# it is built into a pure-Python wheel here (DS_BUILD_OPS=0: its CUDA ops compile just in time where needed).
#   bash bench/gpu/wheelhouse.sh            -> wheelhouse/ (~25 MiB)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"   # needs torch (deepspeed's setup.py imports it) and setuptools
WH="${WHEELHOUSE:-wheelhouse}"
mkdir -p "$WH"
reqs=$(grep -vE '^\s*(#|$)' bench/gpu/requirements.txt)
binary="pydantic-core multiprocess tokenizers"
pure=$(printf '%s\n' $reqs | grep -vE "^(deepspeed|$(echo $binary | tr ' ' '|'))==")
python3 -m pip download -q --no-deps -d "$WH" $pure hatchling packaging pathspec pluggy trove-classifiers tomlkit
for version in 3.12 3.11; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WH" \
    $(printf '%s\n' $reqs | grep -E "^($(echo $binary | tr ' ' '|'))==")
done
ds=$(printf '%s\n' $reqs | grep '^deepspeed==')
python3 -m pip download -q --no-deps --no-binary=:all: -d "$WH/.sdist" "$ds"
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WH" "$WH"/.sdist/deepspeed-*.tar.gz
rm -rf "$WH/.sdist"
du -sh "$WH"
