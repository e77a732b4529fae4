"""Give a world pipeline a two-layer text encoder whose penultimate states carry the caption's structure.

The default model's one-layer CLIP text encoder hands the transformer context-free states (token + position
embeddings), and the model never learned to read "A right of B" from them (docs/default_model.md). This script
inserts a new first layer (trained here) before the shipped one and keeps the shipped embeddings, last layer,
final norm and projection frozen. The new layer is trained on training-split captions only: linear probes on its
output (the penultimate state, which the transformer reads) and on the pooled embedding must tell, at every
position, what the caption up to there says: each object's kind, colour and count, which side each object is on
(left / right / top / bottom, when a relation is stated) and the background. The layer starts as the identity
(its output projections zeroed), and a penalty keeps its change of the states small relative to the embeddings,
so the shipped transformer starts from states close to the ones it knows.

Usage: python scripts/train_structured_text_encoder.py PIPELINE OUT [--steps 3000] [--penalty 0.1]
OUT becomes a copy of PIPELINE with the new text encoder (its transformer then needs fine-tuning to use it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

from meissonic.training.train import tokenize  # noqa: E402
from meissonic.world import BACKGROUNDS, COLOURS, KINDS, Task, heldout_tasks, training_tasks  # noqa: E402

SIDES = ("left", "right", "top", "bottom")
# relation of object 0 to object 1 -> (side of object 0, side of object 1)
RELATION_SIDES = {"left of": ("left", "right"), "right of": ("right", "left"), "above": ("top", "bottom"),
                  "below": ("bottom", "top")}
# head name -> number of classes (class 0 is "not said")
HEADS = {**{f"{field}{slot}": n + 1 for slot in (0, 1) for field, n in
            (("kind", len(KINDS)), ("colour", len(COLOURS)), ("count", 4), ("side", len(SIDES)))},
         "background": len(BACKGROUNDS) + 1}


def structure(task: Task) -> dict[str, int]:
    """The classes a caption states, per head."""
    labels = dict.fromkeys(HEADS, 0)
    sides = RELATION_SIDES[task.relation.relation] if task.relation else (None, None)
    for slot, spec in enumerate(task.objects[:2]):
        labels[f"kind{slot}"] = KINDS.index(spec.kind) + 1
        labels[f"colour{slot}"] = list(COLOURS).index(spec.colour) + 1
        labels[f"count{slot}"] = spec.count
        labels[f"side{slot}"] = SIDES.index(sides[slot]) + 1 if sides[slot] else 0
    if task.background:
        labels["background"] = list(BACKGROUNDS).index(task.background) + 1
    return labels


def encode(tokenizer, text_encoder, tasks: list[Task]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ids = tokenize(tokenizer, text_encoder, [t.text for t in tasks])
    labels = [structure(t) for t in tasks]
    return ids, {h: torch.tensor([lab[h] for lab in labels]) for h in HEADS}


def two_layer(old: CLIPTextModelWithProjection) -> CLIPTextModelWithProjection:
    """The shipped encoder with a new first layer that starts as the identity."""
    config = CLIPTextConfig.from_dict({**old.config.to_dict(), "num_hidden_layers": 2})
    torch.manual_seed(0)
    new = CLIPTextModelWithProjection(config).float()
    state = new.state_dict()
    for key, value in old.state_dict().items():
        state[key.replace(".encoder.layers.0.", ".encoder.layers.1.")] = value.float()
    new.load_state_dict(state)
    first = new.text_model.encoder.layers[0]
    with torch.no_grad():
        for linear in (first.self_attn.out_proj, first.mlp.fc2):
            linear.weight.zero_()
            linear.bias.zero_()
    for name, p in new.named_parameters():
        p.requires_grad = ".encoder.layers.0." in name
    return new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline")
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--penalty", type=float, default=0.1, help="weight of |state change|^2 / |embedding|^2")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists; choose a new folder")

    source = Path(args.pipeline)
    tokenizer = CLIPTokenizer.from_pretrained(source / "tokenizer")
    old = CLIPTextModelWithProjection.from_pretrained(source / "text_encoder", torch_dtype=torch.float32)
    model = two_layer(old)
    width, proj = model.config.hidden_size, model.config.projection_dim
    probes = nn.ModuleDict({"state": nn.ModuleDict({h: nn.Linear(width, n) for h, n in HEADS.items()}),
                            "pooled": nn.ModuleDict({h: nn.Linear(proj, n) for h, n in HEADS.items()})})
    params = [p for p in model.parameters() if p.requires_grad] + list(probes.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.05)

    def losses(ids: torch.Tensor, labels: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        out = model(ids, output_hidden_states=True)
        embedded, states = out.hidden_states[0], out.hidden_states[-2]  # (B, L, W)
        change = (states - embedded).square().sum(-1).mean() / embedded.square().sum(-1).mean()
        total, stats = args.penalty * change, {"change": change.sqrt().item()}
        eos = (ids == tokenizer.eos_token_id).int().argmax(1)  # the first end-of-text token: the pooled one
        for head in HEADS:
            logits = probes["state"][head](states)  # every position predicts what the caption says
            target = labels[head][:, None].expand(-1, ids.shape[1])
            total = total + F.cross_entropy(logits.flatten(0, 1), target.flatten())
            pooled = probes["pooled"][head](out.text_embeds)
            total = total + F.cross_entropy(pooled, labels[head])
            at_eos = logits[torch.arange(len(ids)), eos].argmax(-1)
            stats[head] = (at_eos == labels[head]).float().mean().item()
            stats["pooled_" + head] = (pooled.argmax(-1) == labels[head]).float().mean().item()
        return total, stats

    val_ids, val_labels = encode(tokenizer, model, heldout_tasks(2000, seed=123))
    for step in range(args.steps):
        ids, labels = encode(tokenizer, model, training_tasks(args.batch_size, seed=args.seed * 1_000_003 + step))
        loss, stats = losses(ids, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 250 == 0 or step == args.steps - 1:
            with torch.no_grad():
                _, val = losses(val_ids, val_labels)
            worst = sorted((v, k) for k, v in val.items() if k != "change")[:3]
            print(f"step {step} loss {loss.item():.3f} change {stats['change']:.3f} held-out at EOS: side0 "
                  f"{val['side0']:.3f} side1 {val['side1']:.3f} pooled side0 {val['pooled_side0']:.3f}; worst "
                  + ", ".join(f"{k} {v:.3f}" for v, k in worst), flush=True)

    shutil.copytree(source, out)
    shutil.rmtree(out / "text_encoder")
    for p in model.parameters():
        p.requires_grad = True
    model.to(torch.bfloat16).save_pretrained(out / "text_encoder")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
