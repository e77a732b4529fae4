"""Transformer training on accelerate (single process, DDP, FSDP, DeepSpeed): the masked-token objective with
CFG dropout, EMA, LoRA, gradient checkpointing and accumulation, bf16 autocast, crash-safe resumable
checkpoints.

Reproducibility: the data order and every random choice of step s are functions of (seed, s) over the global
batch, so a resumed run continues exactly where it stopped and a run on N processes sees the same samples and
masks as one process with the same global batch.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..data import (
    ImageTextDataset,
    PositionBatches,
    PreencodedDataset,
    PreencodedSource,
    detect_format,
    first_usable,
    open_source,
)
from ..models.text import max_text_length
from ..sampling.enhance import guided_logits
from . import checkpoint as ckpt
from .components import (
    add_lora,
    export_pipeline,
    load_chained,
    load_text_encoder,
    load_tokenizer,
    load_transformer,
    load_vqvae,
    merged_copy,
    pretrained_sampling_defaults,
    read_transformer_weights,
)
from .config import TrainConfig, fingerprint, save_config
from .ema import EMA
from .engine import end_run, make_accelerator
from .objective import (
    apply_cfg_dropout,
    distillation_scales,
    masked_cross_entropy_sum,
    masked_inputs,
    masked_kl_sum,
    masked_log_likelihood,
    preference_loss,
    step_noise,
    timestep_for,
)
from .optim import build_lr_scheduler, build_optimizer, decay_groups
from .progress import RunLogger


def vq_downsample_factor(vqvae) -> int:
    return 2 ** (len(vqvae.config.block_out_channels) - 1)


@torch.no_grad()
def vq_encode(vqvae, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels (B, 3, H, W) in [0, 1] -> code indices (B, H/f, W/f), in float32 (SPEC section 5)."""
    with torch.autocast(pixels.device.type, enabled=False):
        latents = vqvae.encode(pixels.float()).latents
        _, _, (_, _, indices) = vqvae.quantize(latents)
    return indices.reshape(pixels.shape[0], latents.shape[2], latents.shape[3])


def tokenize(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=max_text_length(tokenizer, text_encoder),
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode_ids(text_encoder, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP conditioning from token ids: penultimate hidden state and projected pooled embedding (SPEC 4)."""
    output = text_encoder(ids, output_hidden_states=True)
    return output.hidden_states[-2], output.text_embeds


def _collate(items: list[dict]) -> dict:
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    batch["skipped"] = sum(item["skipped"] for item in items)
    return batch


class Trainer:
    """Sets up everything (validating inputs before any step), then `run()` trains to `max_steps`."""

    def __init__(self, config: TrainConfig, resume: bool | str = False, accelerator=None):
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.accelerator = accelerator or make_accelerator(config.mixed_precision)
        acc = self.accelerator
        self.world, self.rank = acc.num_processes, acc.process_index
        self.device = acc.device
        self.fingerprint = fingerprint(config)
        self.resume_from = self._resume_folder(resume)

        # Components (validated against each other before anything trains).
        self.run_dir.mkdir(parents=True, exist_ok=True)
        model_cfg = config.model
        self.tokenizer = load_tokenizer(model_cfg, self.run_dir)
        self.text_encoder = load_text_encoder(model_cfg, self.tokenizer, config.seed)
        self.vqvae = load_vqvae(model_cfg.vqvae, model_cfg.pretrained, config.seed).to(self.device).eval()
        self.vqvae.requires_grad_(False)
        transformer = load_transformer(model_cfg, config.seed)
        self.new_keys: list[str] = []
        if model_cfg.init_from:
            self.new_keys = load_chained(transformer, read_transformer_weights(model_cfg.init_from))
        self._check_dimensions(transformer)
        self.dataset, self.text_mode = self._open_data(transformer)
        self.convention = transformer.config.timestep_convention
        self.mask_id = transformer.mask_token_id
        # Preference training and guidance distillation compare against the starting weights, frozen (taken
        # before LoRA and compilation, and before a resumed run's weights are loaded).
        self.preference = config.objective.preference_beta > 0
        self.distill = bool(config.objective.distill_guidance)
        self.reference = None
        if self.preference:
            self._check_preference_data()
        if self.preference or self.distill:
            self.reference = copy.deepcopy(transformer).to(self.device).eval().requires_grad_(False)

        train_te = config.objective.train_text_encoder
        if config.lora.enabled:
            transformer = add_lora(transformer, config.lora)
        if config.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        if config.compile:
            # In place (nn.Module.compile): parameters, state-dict keys and checkpoints are those of the eager model.
            transformer.compile()
        transformer.train()
        self.text_encoder.requires_grad_(train_te)
        self.text_encoder.train(train_te)

        groups = decay_groups(transformer, config.optim.weight_decay)
        if train_te:
            groups += decay_groups(
                self.text_encoder,
                config.optim.weight_decay,
                lr=config.optim.text_encoder_lr or config.optim.lr,
            )
        if not any(g["params"] for g in groups):
            raise ValueError("nothing to train: every parameter is frozen")
        optimizer = build_optimizer(groups, config.optim)
        if train_te:
            self.model, self.text_encoder, self.optimizer = acc.prepare(
                transformer, self.text_encoder, optimizer
            )
        else:
            self.model, self.optimizer = acc.prepare(transformer, optimizer)
            self.text_encoder.to(self.device)
        self.transformer = acc.unwrap_model(self.model)
        self.lr_scheduler = build_lr_scheduler(self.optimizer, config.optim, config.max_steps)
        self.ema = EMA(self.transformer, config.ema.decay) if config.ema.enabled else None
        # A jointly trained text encoder is averaged too: EMA transformer weights expect EMA text features.
        self.text_ema = (
            EMA(acc.unwrap_model(self.text_encoder), config.ema.decay) if config.ema.enabled and train_te else None
        )
        self.trainable = [p for g in groups for p in g["params"]]
        self._empty = self._empty_prompt()

        self.step = 0
        self.skipped = 0
        if self.resume_from is not None:
            self._load(self.resume_from)
        elif acc.is_main_process:
            save_config(config, self.run_dir / "config.yaml")
        self.on_step_end = None  # test hook: called with the step number after each optimizer step

    # ----- setup -----
    def _resume_folder(self, resume: bool | str) -> Path | None:
        existing = ckpt.latest_checkpoint(self.run_dir)
        if not resume:
            if existing is not None:
                raise ValueError(
                    f"run folder {self.run_dir} already has checkpoints; pass --resume to continue it "
                    "or choose another run_dir"
                )
            return None
        folder = Path(resume) if isinstance(resume, str) else existing
        if folder is None:
            raise FileNotFoundError(f"no checkpoint to resume in {self.run_dir / ckpt.CHECKPOINTS}")
        if not (folder / ckpt.STATE_FILE).is_file():
            raise FileNotFoundError(f"{folder} is not a complete checkpoint (no {ckpt.STATE_FILE})")
        state = ckpt.read_json(folder / ckpt.STATE_FILE)
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"checkpoint {folder} was written by a different config (fingerprint "
                f"{state.get('fingerprint')} != {self.fingerprint}); resume with the config of that run"
            )
        return folder

    def _check_dimensions(self, transformer) -> None:
        te, tr = self.text_encoder.config, transformer.config
        if te.hidden_size != tr.joint_attention_dim:
            raise ValueError(
                f"text encoder width {te.hidden_size} != transformer joint_attention_dim "
                f"{tr.joint_attention_dim}"
            )
        if te.projection_dim != tr.pooled_projection_dim:
            raise ValueError(
                f"text encoder projection_dim {te.projection_dim} != transformer "
                f"pooled_projection_dim {tr.pooled_projection_dim}"
            )
        if self.vqvae.config.num_vq_embeddings > tr.codebook_size:
            raise ValueError(
                f"VQ codebook ({self.vqvae.config.num_vq_embeddings}) is larger than the "
                f"transformer's codebook_size ({tr.codebook_size})"
            )

    def _check_preference_data(self) -> None:
        if self.text_mode != "embeddings" or "rejected_tokens" not in self.dataset.source.read(0):
            raise ValueError(
                f"preference training (objective.preference_beta > 0) needs preencoded pairs with a "
                f"'rejected_tokens' grid per row (meissonic world preference-pairs); {self.config.data.path} "
                "has none"
            )

    def _open_data(self, transformer):
        data = self.config.data
        path = Path(data.path)
        if not data.path or not path.exists():
            raise FileNotFoundError(f"data.path {data.path!r} does not exist")
        fmt = detect_format(path) if data.format == "auto" else data.format
        shuffle = (
            data.shuffle
            if data.shuffle != "auto"
            else ("block" if fmt in ("parquet", "webdataset") else "full")
        )
        stride = transformer.token_stride
        if fmt == "preencoded":
            source = PreencodedSource(path)
            meta = source.meta
            grid = meta["token_grid"]
            if grid[0] % stride or grid[1] % stride:
                raise ValueError(
                    f"preencoded resolution {meta['resolution']} gives a {grid[0]}x{grid[1]} token grid, "
                    f"which this transformer cannot take (sides must be multiples of {stride})"
                )
            if meta["codebook_size"] > transformer.config.codebook_size:
                raise ValueError(
                    f"{path} was encoded with a {meta['codebook_size']}-code VQ, larger than the "
                    f"transformer's codebook"
                )
            mode = meta["text"]
            if mode == "embeddings" and self.config.objective.train_text_encoder:
                raise ValueError(
                    f"{path} caches text embeddings; training the text encoder needs token ids "
                    "(preencode with --text ids)"
                )
            return PreencodedDataset(source, self.config.seed, shuffle, data.shuffle_window), mode
        factor = vq_downsample_factor(self.vqvae) * stride
        if data.resolution % factor:
            raise ValueError(
                f"resolution {data.resolution} cannot be taken by this model: it must be a multiple of "
                f"{factor} (VQ factor {vq_downsample_factor(self.vqvae)} x token stride {stride})"
            )
        source = open_source(
            path, fmt, data.image_column, data.caption_column, data.score_column, data.hf_split
        )
        dataset = ImageTextDataset(
            source,
            data.resolution,
            self.config.seed,
            data.random_crop,
            data.default_score,
            shuffle,
            data.shuffle_window,
        )
        if first_usable(dataset) is None:
            raise ValueError(f"dataset {path} holds no usable record (none of the first images decodes)")
        return dataset, "captions"

    @torch.no_grad()
    def _empty_prompt(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The empty prompt's (states, pooled), computed once when the text encoder is frozen."""
        if self.config.objective.train_text_encoder:
            return None
        if self.text_mode == "embeddings":
            empty = self.dataset.source.empty()
            if empty is not None:
                return empty["text_states"].to(self.device), empty["pooled"].to(self.device)
        ids = tokenize(self.tokenizer, self.text_encoder, [""]).to(self.device)
        states, pooled = encode_ids(self.text_encoder, ids)
        return states.float(), pooled.float()

    # ----- the step -----
    def conditioning(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Text states and pooled text for the batch, plus the empty prompt's (after any re-encoding)."""
        if "text_states" in batch:
            states, pooled = batch["text_states"].to(self.device), batch["pooled"].to(self.device)
        else:
            ids = (
                batch["input_ids"]
                if "input_ids" in batch
                else tokenize(self.tokenizer, self.text_encoder, batch["caption"])
            )
            with torch.set_grad_enabled(self.config.objective.train_text_encoder):
                states, pooled = encode_ids(self.text_encoder, ids.long().to(self.device))
        if self._empty is not None:
            empty_states, empty_pooled = self._empty
        else:  # the text encoder trains: the empty prompt is re-encoded with its current weights
            ids = tokenize(self.tokenizer, self.text_encoder, [""]).to(self.device)
            empty_states, empty_pooled = encode_ids(self.text_encoder, ids)
        return states, pooled, empty_states, empty_pooled

    def micro_step(self, batch: dict, masks: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """Forward one micro-batch; returns the summed cross-entropy over its masked positions (with guidance
        distillation: the summed KL from the frozen teacher's guided distribution, except on the rows a preencoded
        folder flags `token_targets`, which keep the cross-entropy on their own tokens)."""
        if "tokens" in batch:
            tokens = batch["tokens"].to(self.device).long()
        else:
            tokens = vq_encode(self.vqvae, batch["pixels"].to(self.device))
        masks = masks.to(self.device)
        args = self.model_inputs(batch, tokens, masks, drop)
        logits = self.model(*args)
        if not self.distill:
            return masked_cross_entropy_sum(logits, tokens, masks)
        # Rows flagged `token_targets` (and not CFG-dropped) learn their own tokens; the others the teacher's.
        flags = batch.get("token_targets")
        own = torch.zeros_like(drop) if flags is None else flags.bool().cpu() & ~drop.cpu()
        if not own.any():
            return masked_kl_sum(logits, self.teacher_logits(args, masks, drop), masks)
        rows = (~own).nonzero().flatten().to(self.device)
        own = own.to(self.device)
        loss = masked_cross_entropy_sum(logits[own], tokens[own], masks[own])
        if len(rows):
            teacher = self.teacher_logits(tuple(a[rows] for a in args), masks[rows], drop[rows.cpu()])
            loss = loss + masked_kl_sum(logits[rows], teacher, masks[rows])
        return loss

    @torch.no_grad()
    def teacher_logits(self, args: tuple[torch.Tensor, ...], masks: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """The frozen starting weights' guided logits for the model's inputs `args`: unconditional and
        conditional branches in one batch (a CFG-dropped row's two branches coincide), combined at the scale
        `objective.distill_guidance` gives each row's mask ratio."""
        inputs, states, pooled, timestep, micro = args
        empty_states, empty_pooled = self._empty  # set: distillation requires a frozen text encoder
        uncond_states, uncond_pooled = apply_cfg_dropout(states, pooled, empty_states, empty_pooled,
                                                         torch.ones_like(drop))
        with self.accelerator.autocast():
            both = self.reference(torch.cat([inputs, inputs]), torch.cat([uncond_states, states]),
                                  torch.cat([uncond_pooled, pooled]), torch.cat([timestep, timestep]),
                                  torch.cat([micro, micro]))
        uncond, cond = both.float().chunk(2)
        scales = distillation_scales(masks.float().mean(dim=1), self.config.objective.distill_guidance)
        return guided_logits(uncond, cond, scales)

    def model_inputs(
        self, batch: dict, tokens: torch.Tensor, masks: torch.Tensor, drop: torch.Tensor, copies: int = 1
    ) -> tuple[torch.Tensor, ...]:
        """The transformer's arguments for `tokens` masked at `masks`, with the batch's text (CFG-dropped where
        `drop`) and micro-conditions; `copies` > 1 when `tokens` stacks that many grids per sample."""
        states, pooled, empty_states, empty_pooled = self.conditioning(batch)
        states, pooled = apply_cfg_dropout(states, pooled, empty_states, empty_pooled, drop)
        inputs = masked_inputs(tokens, masks, self.mask_id)
        timestep = timestep_for(masks.float().mean(dim=1), self.convention).to(self.device)
        micro = batch["micro_conds"].to(self.device).float()
        return inputs, states.repeat(copies, 1, 1), pooled.repeat(copies, 1), timestep, micro.repeat(copies, 1)

    def preference_micro_step(
        self, batch: dict, masks: torch.Tensor, drop: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward the chosen and rejected grids of one micro-batch under the same masks, through the model and
        the frozen reference. Returns the DPO losses summed over the pairs not CFG-dropped, the chosen grids'
        summed cross-entropy, and the margins of the pairs not dropped."""
        chosen = batch["tokens"].to(self.device).long()
        rejected = batch["rejected_tokens"].to(self.device).long()
        tokens = torch.cat([chosen, rejected])  # (2B, h, w): chosen first
        both = torch.cat([masks, masks]).to(self.device)
        args = self.model_inputs(batch, tokens, both, drop, copies=2)
        likelihood = masked_log_likelihood(self.model(*args), tokens, both)
        with torch.no_grad(), self.accelerator.autocast():
            reference = masked_log_likelihood(self.reference(*args), tokens, both)
        size = chosen.shape[0]
        losses, margins = preference_loss(likelihood[:size], likelihood[size:], reference[:size],
                                          reference[size:], self.config.objective.preference_beta)
        kept = ~drop.to(self.device)
        return losses[kept].sum(), -likelihood[:size].sum(), margins[kept].detach()

    def _loader(self):
        cfg = self.config
        sampler = PositionBatches(self.step, cfg.batch_size, cfg.grad_accum, self.rank, self.world)
        return iter(
            DataLoader(
                self.dataset,
                batch_sampler=sampler,
                num_workers=cfg.data.num_workers,
                collate_fn=_collate,
                persistent_workers=cfg.data.num_workers > 0,
            )
        )

    def train_step(self, batches) -> dict[str, float]:
        """One optimizer step over `grad_accum` micro-batches from the iterator `batches`."""
        cfg, acc = self.config, self.accelerator
        micro, accum = cfg.batch_size, cfg.grad_accum
        first = next(batches)
        seq_len = self._seq_len(first)
        noise = step_noise(
            cfg.seed,
            self.step,
            micro * accum * self.world,
            seq_len,
            cfg.objective.cfg_dropout,
            cfg.objective.min_masked,
            cfg.objective.min_mask_ratio,
            cfg.objective.full_mask_fraction,
        )
        total_masked = noise.masks.sum().item()
        pairs = max(int((~noise.drop).sum().item()), 1)
        sft_weight = cfg.objective.preference_sft_weight
        loss_sum = torch.zeros((), device=self.device)
        preference = torch.zeros(3, device=self.device)  # DPO loss, margin, pairs ranked right: summed
        skipped = 0
        for index in range(accum):
            batch = first if index == 0 else next(batches)
            skipped += batch["skipped"]
            part = noise.slice((index * self.world + self.rank) * micro, micro)
            sync = contextlib.nullcontext() if index == accum - 1 else acc.no_sync(self.model)
            with sync:
                if self.preference:
                    dpo, summed, margins = self.preference_micro_step(batch, part.masks, part.drop)
                    acc.backward((dpo / pairs + sft_weight * summed / total_masked) * self.world)
                    preference += torch.stack([dpo.detach(), margins.sum(), (margins > 0).sum().float()])
                else:
                    summed = self.micro_step(batch, part.masks, part.drop)
                    acc.backward(summed * self.world / total_masked)
            loss_sum += summed.detach()
        grad_norm = (
            acc.clip_grad_norm_(self.trainable, cfg.optim.grad_clip) if cfg.optim.grad_clip > 0 else None
        )
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None and self.step >= cfg.ema.start_step:
            self.ema.update(self.transformer)
            if self.text_ema is not None:
                self.text_ema.update(acc.unwrap_model(self.text_encoder))
        self.step += 1
        totals = acc.reduce(
            torch.cat([torch.stack([loss_sum, torch.tensor(float(skipped), device=self.device)]), preference]), "sum"
        )
        self.skipped += int(totals[1].item())
        metrics = {
            "loss": totals[0].item() / total_masked,  # of the chosen grids in preference training
            "lr": self.lr_scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm) if grad_norm is not None else 0.0,
            "tokens": float(seq_len * micro * accum * self.world),
        }
        if self.preference:
            metrics.update(dpo=totals[2].item() / pairs, margin=totals[3].item() / pairs,
                           pair_accuracy=totals[4].item() / pairs)
        return metrics

    def _seq_len(self, batch: dict) -> int:
        if "tokens" in batch:
            return batch["tokens"].shape[1] * batch["tokens"].shape[2]
        side = self.config.data.resolution // vq_downsample_factor(self.vqvae)
        return side * side

    # ----- checkpoints -----
    def save(self) -> Path:
        acc = self.accelerator

        def write(folder: Path) -> None:
            if not acc.is_main_process:
                return
            ckpt.save_tensors(self.transformer.state_dict(), folder / "model.safetensors")
            if self.config.objective.train_text_encoder:
                te = acc.unwrap_model(self.text_encoder)
                ckpt.save_tensors(te.state_dict(), folder / "text_encoder.safetensors")
            if self.ema is not None:
                ckpt.save_tensors(self.ema.state_dict(), folder / "ema.safetensors")
            if self.text_ema is not None:
                ckpt.save_tensors(self.text_ema.state_dict(), folder / "text_encoder_ema.safetensors")
            ckpt.save_object(self.optimizer.state_dict(), folder / "optimizer.pt")
            ckpt.save_object(self.lr_scheduler.state_dict(), folder / "lr_scheduler.pt")
            tensors, values = ckpt.rng_state()
            ckpt.save_tensors(tensors, folder / "rng.safetensors")
            ckpt.write_json(
                {
                    "step": self.step,
                    "fingerprint": self.fingerprint,
                    "skipped": self.skipped,
                    "samples": self.step * self.config.batch_size * self.config.grad_accum * self.world,
                    "rng": values,
                },
                folder / ckpt.STATE_FILE,
            )

        return ckpt.write_checkpoint(
            self.run_dir,
            self.step,
            write,
            self.config.checkpoint.keep_last,
            acc.is_main_process,
            acc.wait_for_everyone,
        )

    def _load(self, folder: Path) -> None:
        state = ckpt.read_json(folder / ckpt.STATE_FILE)
        self.transformer.load_state_dict(ckpt.load_tensors(folder / "model.safetensors"), strict=True)
        if self.config.objective.train_text_encoder:
            te = self.accelerator.unwrap_model(self.text_encoder)
            te.load_state_dict(ckpt.load_tensors(folder / "text_encoder.safetensors"), strict=True)
        if self.ema is not None:
            self.ema.load_state_dict(ckpt.load_tensors(folder / "ema.safetensors"))
        if self.text_ema is not None:
            text_ema = folder / "text_encoder_ema.safetensors"
            if text_ema.is_file():
                self.text_ema.load_state_dict(ckpt.load_tensors(text_ema))
            else:  # written before the text encoder had an EMA: start it from the restored weights
                warnings.warn(f"{folder} has no text encoder EMA; starting it from the current weights", stacklevel=2)
                self.text_ema = EMA(self.accelerator.unwrap_model(self.text_encoder), self.config.ema.decay)
        self.optimizer.load_state_dict(ckpt.load_object(folder / "optimizer.pt"))
        self.lr_scheduler.load_state_dict(ckpt.load_object(folder / "lr_scheduler.pt"))
        ckpt.set_rng_state(ckpt.load_tensors(folder / "rng.safetensors"), state["rng"])
        self.step, self.skipped = int(state["step"]), int(state.get("skipped", 0))

    # ----- outputs -----
    def export_models(self):
        """Plain (LoRA-merged, EMA-applied) copies of the transformer and the text encoder."""
        source = self.transformer
        if (
            self.ema is not None
        ):  # EMA shadows the trainable weights (LoRA adapters with LoRA): apply, then merge
            source = copy.deepcopy(self.transformer)
            self.ema.copy_to(source)
        transformer = merged_copy(source)
        transformer.eval()
        text_encoder = self.accelerator.unwrap_model(self.text_encoder)
        if self.text_ema is not None:
            text_encoder = copy.deepcopy(text_encoder)
            self.text_ema.copy_to(text_encoder)
        return transformer, text_encoder.eval()

    def sampling_defaults(self) -> dict:
        """The export's text-to-image defaults: a fine-tuned checkpoint keeps those of `model.pretrained` (the
        released 48 steps and guidance 9 when it stores none) and its prompt rewrites; a model trained from scratch
        or chained from a stage samples like the run's validation grids (`validation.num_inference_steps`,
        `.guidance_scale`, `.sampler`). A guidance-distilled model samples at guidance 1: its guidance is in its
        weights."""
        if self.config.model.pretrained:
            defaults = pretrained_sampling_defaults(self.config.model.pretrained)
        else:
            cfg = self.config.validation
            defaults = {"default_steps": cfg.num_inference_steps, "default_guidance_scale": cfg.guidance_scale,
                        "default_sampler": cfg.sampler}
        if self.distill:
            defaults["default_guidance_scale"] = 1.0
        return defaults

    def export(self, folder: str | Path | None = None) -> Path:
        folder = Path(folder) if folder else self.run_dir / "export"
        if self.accelerator.is_main_process:
            transformer, text_encoder = self.export_models()
            export_pipeline(folder, transformer, self.vqvae, text_encoder, self.tokenizer,
                            default_resolution=self.config.data.resolution, **self.sampling_defaults())
            self.text_encoder.train(self.config.objective.train_text_encoder)
        self.accelerator.wait_for_everyone()
        return folder

    def validate(self) -> Path:
        """Write a grid of validation images for the current (EMA) weights to `samples/step-N.png`."""
        from ..pipelines import MeissonicPipeline
        from ..sampling import MeissonicScheduler

        cfg = self.config.validation
        transformer, text_encoder = self.export_models()
        pipe = MeissonicPipeline(
            transformer=transformer,
            vqvae=self.vqvae,
            text_encoder=text_encoder,
            tokenizer=self.tokenizer,
            scheduler=MeissonicScheduler(mask_token_id=transformer.mask_token_id),
        )
        size = cfg.resolution or self.config.data.resolution
        generator = torch.Generator().manual_seed(self.config.seed)
        images = pipe(
            prompt=list(cfg.prompts),
            height=size,
            width=size,
            num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.guidance_scale,
            generator=generator,
            output_type="pil",
            sampler=cfg.sampler,
        ).images
        self.text_encoder.train(self.config.objective.train_text_encoder)
        path = self.run_dir / "samples" / f"step-{self.step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image_grid(images).save(path)
        return path

    # ----- the loop -----
    def run(self, export: bool = True) -> dict[str, float]:
        cfg, acc = self.config, self.accelerator
        ckpt.remove_partial(self.run_dir) if acc.is_main_process else None
        logger = RunLogger(
            self.run_dir, self.step, cfg.max_steps, acc.is_main_process, cfg.log.tensorboard, cfg.log.progress
        )
        batches = self._loader()
        last: dict[str, float] = {}
        window_tokens, window_start = 0.0, time.perf_counter()
        try:
            while self.step < cfg.max_steps:
                last = self.train_step(batches)
                window_tokens += last["tokens"]
                elapsed = time.perf_counter() - window_start
                last["tokens_per_s"] = window_tokens / max(elapsed, 1e-9)
                logger.advance(1, loss=last["loss"], tok_s=round(last["tokens_per_s"]))
                if self.step % cfg.log.every == 0 or self.step == cfg.max_steps:
                    logger.log(
                        self.step,
                        {
                            "loss": last["loss"],
                            "lr": last["lr"],
                            "grad_norm": last["grad_norm"],
                            "tokens_per_s": last["tokens_per_s"],
                            "skipped": float(self.skipped),
                            **{k: last[k] for k in ("dpo", "margin", "pair_accuracy") if k in last},
                        },
                    )
                    window_tokens, window_start = 0.0, time.perf_counter()
                if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                    self.save()
                if cfg.validation.every and self.step % cfg.validation.every == 0 and acc.is_main_process:
                    self.validate()
                if self.on_step_end is not None:
                    self.on_step_end(self.step)
            if cfg.checkpoint.every and self.step % cfg.checkpoint.every:
                self.save()
            if export:
                self.export()
        finally:
            logger.close()
        return last

    def close(self) -> None:
        """After a successful `run()`, on every rank: drop the distributed wrappers and end the process group
        (`engine.end_run`). The unwrapped transformer and text encoder stay usable."""
        self.model = self.transformer
        self.text_encoder = self.accelerator.unwrap_model(self.text_encoder)
        self.optimizer = self.lr_scheduler = None
        end_run(self.accelerator)


def image_grid(images: list, columns: int | None = None):
    from PIL import Image

    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, rows * h))
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * w, (i // columns) * h))
    return grid


def train(config: TrainConfig, resume: bool | str = False) -> dict[str, float]:
    trainer = Trainer(config, resume)
    last = trainer.run()
    trainer.close()
    return last
