#!/usr/bin/env bash
# Build a second environment the way a user's LF environment is built, then install the plugin into it and prove
# that doing so changed neither LF nor transformers (issue: "installing us must never change a user's LF").
#
#   tools/compat_env.sh VENV STACK_CONSTRAINTS [LF_SRC]
#
# 1. the user's stack: torch/torchvision (the Makefile's pair), LF (PyPI, or an LF source tree LF_SRC, installed as
#    LF's README does) and the transformers that STACK_CONSTRAINTS names;
# 2. the plugin, `pip install -e ".[dev]"`, with NO constraints (what a user types);
# 3. LF's and transformers' versions before and after must be equal, else this exits non-zero.
set -euo pipefail
venv=$1 constraints=$2 lf_src=${3:-}
python=${PYTHON:-python3}
torch_pair=${TORCH:-"torch==2.14.1 torchvision==0.29.1"}
stamp="$venv/.installed-$(basename "$constraints")${lf_src:+-src}"
[ -f "$stamp" ] && exit 0
test -x "$venv/bin/python" || "$python" -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086
if [ -n "$lf_src" ]; then
  grep -v '^llamafactory' "$constraints" > "$venv/stack-constraints.txt"
  "$py" -m pip install --quiet $torch_pair -c "$venv/stack-constraints.txt" "$lf_src" \
    "$(grep '^transformers' "$constraints")"
else
  "$py" -m pip install --quiet $torch_pair -c "$constraints" "$(grep '^llamafactory' "$constraints")" \
    "$(grep '^transformers' "$constraints")"
fi
versions() { "$py" -c 'from importlib.metadata import version as v; print("llamafactory", v("llamafactory"), "transformers", v("transformers"))'; }
before=$(versions)
"$py" -m pip install --quiet -e ".[dev]"
after=$(versions)
echo "user stack before installing the plugin: $before"
echo "user stack after installing the plugin:  $after"
if [ "$before" != "$after" ]; then
  echo "error: installing llamafactory-attok changed the user's stack" >&2
  exit 1
fi
"$py" -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder as B; B().load()" >/dev/null 2>&1 || true
touch "$stamp"
