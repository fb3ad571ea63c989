#!/usr/bin/env bash
# The one command for the GPU machine (BENCHMARKS.md §6): install what the machine lacks from wheelhouse/ (no
# registry there), install this plugin, then run bench/gpu/check.py (arguments pass through). The model (16.6 GB
# at 7B), adapters and logs stay in $WORK (default /tmp/gpu_check); results.json (rewritten after every phase),
# install.log, gpu_check.log and, at the end, logs.tgz go to $OUT when the device runner sets it (at most 8 small
# files come back from there), else to outputs/gpu_check.
#   device runner (carry: ["wheelhouse"]); a whole 7B run takes ~17 min of device time, so in two sessions:
#     bash bench/gpu/check.sh --stages 2 --budget-s 520
#     bash bench/gpu/check.sh --stages 3 --steps 10 --skip-predict --budget-s 520
#   smaller model:  bash bench/gpu/check.sh --config bench/gpu/configs/qwen2_vl_2b_config.json
# The wheelhouse is prepared on a machine with a registry by bench/gpu/wheelhouse.sh.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
RESULTS="${OUT:-outputs/gpu_check}"
WORK="${WORK:-/tmp/gpu_check}"
mkdir -p "$RESULTS" "$WORK"
start=$(date +%s)
{
  echo "== $(date -u +%FT%TZ) $(uname -n) $($PY -V 2>&1)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
  if [ -d wheelhouse ]; then
    $PY -m pip install -q --no-index --find-links wheelhouse --no-deps --no-cache-dir -r bench/gpu/requirements.txt \
      || { echo "wheelhouse install failed"; exit 3; }
    # the plugin itself (hatchling and its needs come from wheelhouse/ too); puts the start-up hook in site-packages
    $PY -m pip install -q --no-index --find-links wheelhouse --no-deps --no-cache-dir . \
      || { echo "plugin install failed"; exit 3; }
  fi
  echo "pip check (informational: LF's web UI / API / video extras are left out on purpose):"
  $PY -m pip check 2>&1 | sed 's/^/  /' || true
  $PY -c "import llamafactory, deepspeed, trl, datasets, transformers, peft, torch, llamafactory_attok; \
print('versions', llamafactory.__version__, deepspeed.__version__, trl.__version__, datasets.__version__, \
transformers.__version__, peft.__version__, torch.__version__, 'cuda', torch.cuda.is_available())" \
    || { echo "imports failed"; exit 3; }
  echo "install took $(( $(date +%s) - start )) s"
} 2>&1 | tee "$RESULTS/install.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 3
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PY" bench/gpu/check.py --out "$WORK" --mirror "$RESULTS" "$@" 2>&1 | tee "$RESULTS/gpu_check.log" \
  | grep -E '^\{|^Traceback|Error'
code="${PIPESTATUS[0]}"
(cd "$WORK" && tar czf "$RESULTS/logs.tgz" --exclude=model --exclude='*.safetensors' --exclude='*.pt' \
  --exclude='checkpoint-*' . 2>/dev/null) || true
exit "$code"
