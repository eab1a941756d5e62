#!/usr/bin/env bash
# Reproduces the README results table: Co-op tiny (coarse, 1-hyp, 5-hyp; RGB and RGB-D) and the classical
# baselines on (a) the robosuite synthetic test set and (b) the real LM-O frame in ../shared/data/real.
# Usage: bash scripts/results_table.sh OUT_DIR [IMAGES_EVERY]   (OUT_DIR/robosuite_test is made if missing)
set -euo pipefail
out=${1:?usage: results_table.sh OUT_DIR [IMAGES_EVERY]}
every=${2:-1}
here=$(cd "$(dirname "$0")/.." && pwd)
lmo="$here/../shared/data/real/lmo-frame3"
mkdir -p "$out"

# (a) evaluation-only objects: robosuite's grocery meshes (metres), never used in training
if [ ! -f "$out/robosuite_test/test_targets_bop19.json" ]; then
    whl=$(mktemp -d)
    python3 -m pip download -q --no-deps robosuite==1.5.2 -d "$whl"
    python3 -m zipfile -e "$whl"/robosuite-*.whl "$whl/x"
    m="$whl/x/robosuite/models/assets/objects/meshes"
    cooppose synth objects --out "$out/robosuite_models" --units m \
        --mesh "$m/bread.obj" --mesh "$m/can.obj" --mesh "$m/cereal.obj" --mesh "$m/lemon.obj" --mesh "$m/milk.obj"
    cooppose synth scenes --objects "$out/robosuite_models" --out "$out/robosuite_test" --n-images 50 --seed 7 --split test
fi

run() {  # run NAME DATASET ARGS...
    local name=$1 ds=$2; shift 2
    cooppose eval --dataset "$ds" --name "$name" --images-every "$every" --no-progress --out "$out/runs/$(basename "$ds")-$name" "$@" >/dev/null
}
for ds in "$out/robosuite_test" "$lmo"; do
    [ -d "$ds" ] || continue
    for mode in rgb rgbd; do
        run "coop-coarse-$mode" "$ds" --mode "$mode" --stage coarse
        run "coop-1hyp-$mode" "$ds" --mode "$mode" --stage select --hypotheses 1
        run "coop-5hyp-$mode" "$ds" --mode "$mode" --stage select --hypotheses 5
    done
    run "sift-rgb" "$ds" --method sift --mode rgb
    run "fpfh-rgbd" "$ds" --method fpfh --mode rgbd
done
python3 -c "import sys; from cooppose.eval.report import compare_runs; print(compare_runs(sorted(sys.argv[1:])))" "$out"/runs/*
