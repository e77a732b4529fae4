#!/usr/bin/env bash
# Paired comparison of every enhanced-inference technique (and the published combination) against vanilla
# sampling on the world benchmark: same held-out prompts, same seeds, vanilla generated once. Prints the markdown
# table of docs/enhanced_inference.md; OUT (default docs/compare) gets the JSON results, the printed report and the
# side-by-side grid (one row per setting).
# Usage: bash scripts/compare_samplers.sh [MODEL] [OUT] [NUM_PROMPTS]   (MODEL default: the embedded model)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
# one interpreter for the comparison and the image resizing at the end: the project's .venv, else python3
if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
meissonic=("$python" -m meissonic.interfaces.cli)
model=${1:-meissonic/assets/default_model} out=${2:-docs/compare} num=${3:-200}
images=${COMPARE_IMAGES:-$(mktemp -d)}   # every generated image (not kept in the repository)
mkdir -p "$out"
"${meissonic[@]}" eval compare --model "$model" --a vanilla --a-label vanilla \
  --b "noise_reg=2" "differential=true" "zigzag=true" "guidance_schedule=cosine" "guidance_interval=0.1:0.9" \
      "order=halton" "tome_ratio=0.25" "published" \
  --b-label "noise_reg=2" "differential" "zigzag" "guidance cosine ramp" "guidance interval 0.1-0.9" \
            "halton" "tome 0.25" "published (noise + differential + zigzag)" \
  --num-prompts "$num" --seed 0 --batch-size 4 --out "$out/compare.json" --save-images "$images" \
  --side-by-side 6 | tee "$out/compare.txt"
cp "$images/side_by_side.txt" "$out/"
# the full-size grid is 3.3 MB; the repository keeps a half-size JPEG of it (about 150 kB)
"$python" -c 'import sys; from PIL import Image; im = Image.open(sys.argv[1]).convert("RGB")
im.resize((im.width // 2, im.height // 2), Image.LANCZOS).save(sys.argv[2], quality=85)' \
  "$images/side_by_side.png" "$out/side_by_side.jpg"
