#!/usr/bin/env bash
# The main job on the embedded synthetic default: synth -> convert -> train -> export -> infer -> bench -> report.
# Everything lands under ${MTL_DEMO_DIR:-runs/demo}. MTL_DEMO_QUICK=1 runs a small smoke version (6 min on a
# shared 2-core VM, README "Set up").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
export MPLBACKEND=Agg
D=${MTL_DEMO_DIR:-runs/demo}
if [ "${MTL_DEMO_QUICK:-0}" = "1" ]; then
  NTRAIN=32; NVAL=8; TRAIN_ARGS=(--epochs 2); ITERS=10
else
  NTRAIN=400; NVAL=100; TRAIN_ARGS=(); ITERS=100
fi
mkdir -p "$D"
echo "== 1/8 synthesise raw A2D2-layout data ($NTRAIN train + $NVAL val frames)"
mtl data synth --out "$D/raw_train" --frames "$NTRAIN" --seed 1 --overwrite
mtl data synth --out "$D/raw_val" --frames "$NVAL" --seed 2 --overwrite
echo "== 2/8 convert to NPZ chunks"
mtl data convert --a2d2 "$D/raw_train" --out "$D/train" --overwrite
mtl data convert --a2d2 "$D/raw_val" --out "$D/val" --overwrite
mtl data inspect "$D/val"
echo "== 3/8 train"
mtl train --data "$D/train" --val "$D/val" --out "$D/run" --overwrite "${TRAIN_ARGS[@]}"
mtl viz "$D/run"
echo "== 4/8 evaluate"
mtl eval --checkpoint "$D/run/best.pt" --data "$D/val" --out "$D/run/eval.json"
echo "== 5/8 export (fp32 + fp16 + int8 for TensorRT + int8 for the onnxruntime CPU, parity-checked and gated)"
mtl export "$D/run/best.pt" --out "$D/export" --fp16 --int8 --int8-cpu --calib-data "$D/train" --val-data "$D/val" \
  --overwrite
echo "== 6/8 infer on the validation frames, scored against their labels"
mtl infer --model "$D/export/model.onnx" --data "$D/val" --out "$D/infer" --overlay --eval --limit 16 --overwrite
echo "== 7/8 benchmark from sensor input (torch eager vs onnxruntime variants, per stage)"
mtl bench --model "$D/export/model.onnx" --checkpoint "$D/run/best.pt" --data "$D/raw_val" --input sensor \
  --compare torch,onnxruntime,onnxruntime-fp16,onnxruntime-int8,onnxruntime-int8-cpu,tensorrt --queries "$ITERS" --warmup 5 \
  --out "$D/bench"
echo "== 8/8 report: one static site of the run, the export, the inference and the benchmark"
mtl report "$D/run" "$D/export" "$D/infer" "$D/bench" --out "$D/site"
echo "done: open $D/site/index.html (run: $D/run, export: $D/export/export_report.md, infer: $D/infer, bench: $D/bench)"
