#!/usr/bin/env bash
# Scores a set of checkpoints with the whole pipeline on held-out images of the TRAINING objects
# (never evaluation objects): how docs/training.md chooses which checkpoint to ship.
# Usage: bash scripts/val_pipeline.sh CKPT_DIR OUT_DIR [MODELS_DIR]
#   CKPT_DIR: folder with {coarse,refiner,selection}_tiny.pt; MODELS_DIR: the training objects
#   (default data/synth/models). OUT_DIR/val_synth (24 new images, seed 123) is made if missing.
set -euo pipefail
ckpt=${1:?usage: val_pipeline.sh CKPT_DIR OUT_DIR [MODELS_DIR]}
out=${2:?usage: val_pipeline.sh CKPT_DIR OUT_DIR [MODELS_DIR]}
models=${3:-data/synth/models}
mkdir -p "$out"
if [ ! -f "$out/val_synth/test_targets_bop19.json" ]; then
    cooppose synth scenes --objects "$models" --out "$out/val_synth" --n-images 24 --seed 123 --split test
fi
run() {  # run NAME ARGS...
    local name=$1; shift
    cooppose eval --dataset "$out/val_synth" --checkpoints "$ckpt" --name "$name" --images-every 2 --no-progress \
        --out "$out/runs/$name" "$@" >/dev/null
}
for mode in rgb rgbd; do
    run "coarse-$mode" --mode "$mode" --stage coarse
    run "refine-$mode" --mode "$mode" --stage refine
    run "5hyp-$mode" --mode "$mode" --stage select --hypotheses 5
done
python3 -c "import sys; from cooppose.eval.report import compare_runs; print(compare_runs(sorted(sys.argv[1:])))" "$out"/runs/*
