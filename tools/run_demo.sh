#!/usr/bin/env bash
# Quick start: set up (once), train the quick-start tokenizer (FSQ) on the embedded procedural
# dataset, then evaluate its last checkpoint and save reconstructions.
#   bash tools/run_demo.sh [tools/train.py args, e.g. --cfg-options train_cfg.max_iters=300]
# WORK_DIR (default work_dirs/demo) and CONFIG can be set in the environment;
# VISTOK_PYTHON skips the set-up and uses that interpreter.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${VISTOK_PYTHON:-$(bash "$ROOT/tools/setup_env.sh" | tail -n 1)}"
CONFIG="${CONFIG:-$ROOT/configs/vqvae/vqvae_fsq-1k_conv-f4_1xb8-1500_shapes-64.py}"
WORK_DIR="${WORK_DIR:-$ROOT/work_dirs/demo}"
cd "$ROOT"
export HF_HUB_OFFLINE=1

"$PY" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" "$@"
CHECKPOINT="$(cat "$WORK_DIR/last_checkpoint")"
"$PY" tools/test.py "$CONFIG" "$CHECKPOINT" --work-dir "$WORK_DIR" \
    --show-dir reconstructions
cat <<MSG

Demo finished. The run on one sheet (curves, reconstructions, codebook usage):
  $WORK_DIR/summary.png   (redraw / compare runs: tools/analysis/plot_run.py)
In $WORK_DIR:
  $(basename "$CHECKPOINT")            last checkpoint (export: tools/model_converters/export_safetensors.py)
  <timestamp>/vis_data/scalars.json   training losses and validation metrics
  reconstructions/                    test images, input | reconstruction
MSG
