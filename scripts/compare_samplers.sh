#!/usr/bin/env bash
# Paired comparison of every enhanced-inference technique (and the published combination) against vanilla
# sampling on the world benchmark: same held-out prompts, same seeds. Prints the markdown table of
# docs/enhanced_inference.md; JSON results and side-by-side strips go to OUT (default docs/compare).
# Usage: bash scripts/compare_samplers.sh [MODEL] [OUT] [NUM_PROMPTS]   (MODEL default: the embedded model)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
meissonic=".venv/bin/meissonic"
[ -x "$meissonic" ] || meissonic="meissonic"
model=${1:-meissonic/assets/default_model} out=${2:-docs/compare} num=${3:-200}
images=${COMPARE_IMAGES:-$(mktemp -d)}   # every generated image (not kept in the repository)
mkdir -p "$out"
rows=()
for spec in "noise_reg=2" "differential=true" "zigzag=true" "guidance_schedule=cosine" "guidance_interval=0.1:0.9" \
            "order=halton" "tome_ratio=0.25" "published"; do
  name=$(echo "$spec" | tr '=,:.' '----')
  "$meissonic" eval compare --model "$model" --a vanilla --b "$spec" --num-prompts "$num" --seed 0 \
    --batch-size 4 --out "$out/$name.json" --save-images "$images/$name" | tee "$out/$name.txt"
  cp "$images/$name/side_by_side.png" "$out/$name-side_by_side.png"
  rows+=("$(grep '^| ' "$out/$name.txt")")
done
echo
echo "| B (vs vanilla) | overall | kind | colour | count | position | background | win rate of B [95% CI] | s/image |"
echo "|---|---|---|---|---|---|---|---|---|"
python3 - "$out/noise_reg-2.json" <<'PY'   # the vanilla row (A is the same in every run)
import json, sys
r = json.load(open(sys.argv[1]))["a"]
cats = " | ".join(f"{r['scores']['categories'][c]:.3f}" for c in ("kind", "colour", "count", "position", "background"))
print(f"| vanilla (A) | {r['scores']['overall']:.3f} | {cats} | - | {r['seconds_per_image']:.2f} |")
PY
printf '%s\n' "${rows[@]}"
