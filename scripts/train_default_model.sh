#!/usr/bin/env bash
# Train the embedded default model from nothing on this machine (CPU): world renders -> VQ tokenizer -> token
# shards -> transformer -> the package's assets. Finished stages are skipped and the training stages resume from
# their last checkpoint (cut token shards are written again), so run it again after a cut.
# Usage: bash scripts/train_default_model.sh   (after bash scripts/setup.sh train)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
meissonic=".venv/bin/meissonic" python=".venv/bin/python"
[ -x "$meissonic" ] || { meissonic="meissonic"; python="python"; }
runs=runs/default_model

"$meissonic" world render --out data/world_train --num 30000 --seed 0          # resumable
"$meissonic" world tokenizer --out "$runs/tokenizer"
resume() { [ -d "$1" ] && ls "$1"/checkpoints/step-* >/dev/null 2>&1 && echo --resume || true; }
if [ ! -f "$runs/vq8/export/vqvae/config.json" ] && [ -f weights/world_vq8/config.json ]; then
  mkdir -p "$runs/vq8/export" && cp -r weights/world_vq8 "$runs/vq8/export/vqvae"   # the committed result of this stage
fi
[ -f "$runs/vq8/export/vqvae/config.json" ] || \
  "$meissonic" train-vq --config configs/default_model/vq8.yaml $(resume "$runs/vq8")
[ -d "$runs/vq8_32" ] || \
  "$meissonic" merge-codes --vqvae "$runs/vq8/export/vqvae" --data data/world_train --codes 32 --out "$runs/vq8_32"
[ -f "$runs/tokens8_32t1s/preencoded.json" ] || \
  "$meissonic" preencode --config configs/default_model/transformer8_32t1.yaml --input data/world_train \
    --limit 20000 --output "$runs/tokens8_32t1s"
# Always resumed: a finished run only exports again (seconds); an export left by a shorter schedule is not final.
"$meissonic" train --config configs/default_model/transformer8_32t1.yaml $(resume "$runs/transformer8_32t1s")
# Stage 2: the stage-1 transformer grown by four single-stream blocks (they start as the identity).
"$meissonic" train --config configs/default_model/transformer8_32t1_deep.yaml $(resume "$runs/transformer8_32t1_deep")
# Stage 3: the stage-2 model fine-tuned on its own correct samples (each paired with a training render).
[ -f "$runs/self_samples/preencoded.json" ] || { rm -rf "$runs/self_samples" && \
  "$meissonic" world self-samples --model "$runs/transformer8_32t1_deep/export" --out "$runs/self_samples" \
    --num-prompts 3168 --seed 11; }
"$meissonic" train --config configs/default_model/transformer8_32t1_rft.yaml $(resume "$runs/transformer8_32t1_rft")
# Stage 4: the stage-3 model's guided sampling distilled into its conditional branch. The teacher's guidance is that
# of its sampler: 20 steps, the first 14 on the first half of the mask schedule (fifteenth session,
# docs/default_model.md "Finer early steps") guided at 3, the last 6 guided at 2 (twenty-first session, "Weaker
# guidance kept in the late steps").
"$meissonic" world render --out data/distill_renders --num 6000 --seed 5          # resumable
[ -f "$runs/tokens_distill/preencoded.json" ] || \
  "$meissonic" preencode --config configs/default_model/transformer8_32t1_distill.yaml --input data/distill_renders \
    --output "$runs/tokens_distill"
"$meissonic" train --config configs/default_model/transformer8_32t1_distill.yaml \
  $(resume "$runs/transformer8_32t1_distill")
# Stage 5: groups of three drawn as the package's prompt rewrites restate them ("two large A left of a large A"),
# learned as tokens, while the other rows keep the stage-4 model's own distribution (thirty-sixth session).
[ -f data/three_targets/restated/metadata.jsonl ] || "$python" scripts/three_targets_data.py render data/three_targets
for part in three restated; do
  [ -f "$runs/tokens_${part}_only/preencoded.json" ] || \
    "$meissonic" preencode --config configs/default_model/transformer8_32t1_three.yaml \
      --input "data/three_targets/$part" --output "$runs/tokens_${part}_only"
done
[ -f "$runs/tokens_three/preencoded.json" ] || \
  "$python" scripts/three_targets_data.py flag "$runs/tokens_three" "$runs/tokens_three_only" "$runs/tokens_restated_only"
"$meissonic" train --config configs/default_model/transformer8_32t1_three.yaml $(resume "$runs/transformer8_32t1_three")
# Packaged with guidance 1 (one branch per step) and the rest of the stage-3 sampler: the first 14 steps on the
# first half of the mask schedule, the last 6 at token temperature 0.1 (seventeenth session, "A colder draw in the
# late steps").
"$python" scripts/package_default_model.py "$runs/transformer8_32t1_three/export" --steps 20 --guidance-scale 1 \
  --sampler "early_steps=0.7,late_token_temperature=0.1"
