#!/usr/bin/env bash
# A few AttTok LoRA steps on a real 7B-class model if one is present locally; skips cleanly otherwise.
#   MODEL_DIR=/models/Qwen2.5-VL-7B-Instruct bash bench/gpu/smoke.sh
#   MODEL_DIR=/models/medgemma-4b-it TEMPLATE=gemma3 bash bench/gpu/smoke.sh     # any supported family
TEMPLATE="${TEMPLATE:-qwen2_vl}"
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL_DIR="${MODEL_DIR:-}"
if [ -z "$MODEL_DIR" ] || [ ! -f "$MODEL_DIR/config.json" ]; then
  echo "SKIP: no local 7B-class model (set MODEL_DIR to a model folder with config.json, TEMPLATE to its LF template)"
  exit 0
fi
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "SKIP: no CUDA device"; exit 0
fi
OUT="${OUT:-outputs/gpu_smoke}"
.venv/bin/llamafactory-cli train examples/attok_lora.yaml model_name_or_path="$MODEL_DIR" template="$TEMPLATE" \
  output_dir="$OUT" \
  max_steps=5 logging_steps=1 save_steps=5 deepspeed=null per_device_train_batch_size=2 gradient_accumulation_steps=1 \
  dataset_dir=data dataset=retina_attok_train attok_vocab=data/retina_vocab.yaml report_to=none
test -f "$OUT/attok_state.safetensors" && grep -q loss_acm "$OUT/trainer_log.jsonl" && echo "OK: AttTok trained 5 steps"
