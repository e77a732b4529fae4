"""VQ tokenizer training (diffusers `VQModel`): reconstruction + codebook + commitment losses, an
optional patch
discriminator (hinge loss), dead-code restarts, and held-out PSNR / SSIM / codebook usage."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..data import ImageTextDataset, PositionBatches, first_usable, open_source
from ..data.sources import Record, Source
from . import checkpoint as ckpt
from .components import load_vqvae
from .config import VQTrainConfig, fingerprint, save_config
from .engine import end_run, make_accelerator
from .objective import step_generator
from .optim import build_lr_scheduler, build_optimizer, decay_groups
from .progress import RunLogger
from .train import _collate, vq_downsample_factor


class PatchDiscriminator(nn.Module):
    """PatchGAN-style discriminator: strided convolutions to a map of real/fake logits."""

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, layers):
            out = channels * min(2**i, 8)
            blocks += [
                nn.Conv2d(width, out, 4, 2, 1),
                nn.GroupNorm(min(32, out // 4), out),
                nn.LeakyReLU(0.2),
            ]
            width = out
        blocks.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)


def quantize(vqvae, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest codebook vectors (B, C, H, W), with gradient to the codebook, and their indices (B, H, W)."""
    b, c, h, w = latents.shape
    flat = latents.permute(0, 2, 3, 1).reshape(-1, c)
    codebook = vqvae.quantize.embedding.weight
    distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.t() + codebook.pow(2).sum(1)[None]
    indices = distances.argmin(dim=1)
    return codebook[indices].view(b, h, w, c).permute(0, 3, 1, 2), indices.view(b, h, w)


def decode_latents(vqvae, quantized: torch.Tensor) -> torch.Tensor:
    hidden = vqvae.post_quant_conv(quantized)
    return vqvae.decoder(hidden, quantized if vqvae.config.norm_type == "spatial" else None)


def reconstruct(vqvae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """encode -> nearest code -> decode in float32: reconstructions (B, 3, H, W) in [0, 1] and code indices."""
    with torch.autocast(pixels.device.type, enabled=False):
        codes, indices = quantize(vqvae, vqvae.encode(pixels.float()).latents.float())
        return decode_latents(vqvae, codes).float().clamp(0, 1), indices


class Autoencoder(nn.Module):
    """encode -> quantize (straight-through) -> decode as one module, so DDP/FSDP wrap a single forward."""

    def __init__(self, vqvae):
        super().__init__()
        self.vqvae = vqvae

    def forward(self, pixels: torch.Tensor):
        latents = self.vqvae.encode(pixels).latents
        with torch.autocast(pixels.device.type, enabled=False):
            codes, indices = quantize(self.vqvae, latents.float())
        straight = latents + (codes - latents).detach()
        recon = decode_latents(self.vqvae, straight.to(latents.dtype)).float()
        return recon, latents.float(), codes, indices


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image PSNR in dB for images in [0, 1]."""
    mse = (x - y).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return 10 * torch.log10(1.0 / mse)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per image SSIM (Gaussian window, per channel, averaged) for images in [0, 1]."""
    coords = torch.arange(window, dtype=torch.float32) - window // 2
    g = torch.exp(-coords.pow(2) / (2 * sigma**2))
    g = (g / g.sum()).to(x.device)
    kernel = (g[:, None] * g[None, :]).expand(x.shape[1], 1, window, window).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=x.shape[1])

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return value.flatten(1).mean(1)


class SubsetSource(Source):
    def __init__(self, source: Source, indices: list[int]):
        self.source, self.indices = source, indices
        self.blocks = [len(indices)]

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, index: int) -> Record:
        return self.source.read(self.indices[index])


class VQTrainer:
    def __init__(self, config: VQTrainConfig, resume: bool | str = False, accelerator=None):
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.export_dir = self.run_dir / "export"
        self.accelerator = accelerator or make_accelerator(config.mixed_precision)
        acc = self.accelerator
        self.world, self.rank, self.device = acc.num_processes, acc.process_index, acc.device
        self.fingerprint = fingerprint(config)
        existing = ckpt.latest_checkpoint(self.run_dir)
        if resume:
            self.resume_from = Path(resume) if isinstance(resume, str) else existing
            if self.resume_from is None:
                raise FileNotFoundError(f"no checkpoint to resume in {self.run_dir / ckpt.CHECKPOINTS}")
            state = ckpt.read_json(self.resume_from / ckpt.STATE_FILE)
            if state.get("fingerprint") != self.fingerprint:
                raise ValueError(f"checkpoint {self.resume_from} was written by a different config")
        else:
            if existing is not None:
                raise ValueError(
                    f"run folder {self.run_dir} already has checkpoints; pass --resume or change run_dir"
                )
            self.resume_from = None

        vqvae = load_vqvae(config.vqvae or {}, None, config.seed)
        factor = vq_downsample_factor(vqvae)
        if config.data.resolution % factor:
            raise ValueError(
                f"resolution {config.data.resolution} cannot be taken by this VQ: it must be a multiple "
                f"of its downsampling factor {factor}"
            )
        self.train_set, self.val_set = self._open_data()
        vqvae.train()
        vqvae.requires_grad_(True)
        if config.decoder_only:
            if not isinstance(config.vqvae, str):
                raise ValueError("decoder_only fine-tunes an existing VQ: set 'vqvae' to its folder")
            vqvae.requires_grad_(False)
            for part in (vqvae.post_quant_conv, vqvae.decoder):
                part.requires_grad_(True)
        autoencoder = Autoencoder(vqvae)
        self.codes = vqvae.config.num_vq_embeddings
        optimizer = build_optimizer(decay_groups(vqvae, config.optim.weight_decay), config.optim)
        self.discriminator = None
        if config.loss.discriminator > 0:
            torch.manual_seed(config.seed + 1)
            disc = PatchDiscriminator(config.loss.discriminator_channels, config.loss.discriminator_layers)
            disc_opt = build_optimizer(decay_groups(disc, 0.0), config.optim)
            self.model, self.optimizer, self.discriminator, self.disc_optimizer = acc.prepare(
                autoencoder, optimizer, disc, disc_opt
            )
        else:
            self.model, self.optimizer = acc.prepare(autoencoder, optimizer)
        self.vqvae = acc.unwrap_model(self.model).vqvae
        self.lr_scheduler = build_lr_scheduler(self.optimizer, config.optim, config.max_steps)
        self.usage = torch.zeros(self.codes, dtype=torch.long)  # code hits since the last restart check
        self.step = 0
        if self.resume_from is not None:
            self._load(self.resume_from)
        elif acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.run_dir / "config.yaml")

    def _open_data(self) -> tuple[ImageTextDataset, ImageTextDataset]:
        data, cfg = self.config.data, self.config
        if not data.path or not Path(data.path).exists():
            raise FileNotFoundError(f"data.path {data.path!r} does not exist")
        source = open_source(
            data.path, data.format, data.image_column, data.caption_column, data.score_column, data.hf_split
        )
        if cfg.val_path:
            val_source = open_source(
                cfg.val_path, "auto", data.image_column, data.caption_column, data.score_column, data.hf_split
            )
            train_source: Source = source
        else:
            held = min(cfg.val_images, len(source) // 2)
            if held < 1:
                raise ValueError(f"dataset {data.path} is too small to hold out validation images")
            train_source = SubsetSource(source, list(range(len(source) - held)))
            val_source = SubsetSource(source, list(range(len(source) - held, len(source))))
        train = ImageTextDataset(train_source, data.resolution, cfg.seed, data.random_crop)
        val = ImageTextDataset(val_source, data.resolution, cfg.seed, random_crop=False)
        if first_usable(train) is None:
            raise ValueError(f"dataset {data.path} holds no usable record (none of the first images decodes)")
        return train, val

    def losses(self, pixels: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        cfg = self.config.loss
        recon, latents, codes, indices = self.model(pixels)
        codebook = F.mse_loss(codes, latents.detach())
        commitment = F.mse_loss(latents, codes.detach())
        l1, l2 = (recon - pixels).abs().mean(), (recon - pixels).pow(2).mean()
        loss = cfg.l1 * l1 + cfg.l2 * l2 + cfg.codebook * codebook + cfg.commitment * commitment
        parts = {
            "l1": l1.item(),
            "l2": l2.item(),
            "codebook": codebook.item(),
            "commitment": commitment.item(),
        }
        parts["adversarial"] = 0.0
        if self.discriminator is not None and step >= cfg.discriminator_start:
            adversarial = -self.discriminator(recon).mean()
            loss = loss + cfg.discriminator * adversarial
            parts["adversarial"] = adversarial.item()
        return loss, parts, (recon.detach(), indices, latents.detach())

    def _discriminator_step(self, pixels: torch.Tensor, recon: torch.Tensor) -> float:
        real, fake = self.discriminator(pixels), self.discriminator(recon)
        loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        self.accelerator.backward(loss)
        self.disc_optimizer.step()
        self.disc_optimizer.zero_grad(set_to_none=True)
        return loss.item()

    @torch.no_grad()
    def restart_dead_codes(self, latents: torch.Tensor) -> int:
        """Re-initialise codes unused since the last check to encoder outputs of the current batch."""
        usage = self.accelerator.reduce(self.usage.to(self.device), "sum").cpu()
        dead = (usage == 0).nonzero().flatten()
        self.usage.zero_()
        if len(dead) == 0:
            return 0
        flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).float()
        generator = step_generator(self.config.seed, self.step, stream=7)
        choice = torch.randint(0, flat.shape[0], (len(dead),), generator=generator).to(flat.device)
        replacement = flat[choice] + 0.01 * flat.std() * torch.randn(
            len(dead), flat.shape[1], generator=generator
        ).to(flat.device)
        if self.world > 1:
            from accelerate.utils import broadcast

            replacement = broadcast(replacement.contiguous(), 0)
        self.vqvae.quantize.embedding.weight.data[dead.to(self.device)] = replacement.to(
            self.vqvae.quantize.embedding.weight.dtype
        )
        return len(dead)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out reconstruction PSNR / SSIM and codebook usage (fraction of codes used, perplexity)."""
        self.vqvae.eval()
        scores_psnr, scores_ssim = [], []
        counts = torch.zeros(self.codes)
        loader = DataLoader(
            [self.val_set[i] for i in range(len(self.val_set))],
            batch_size=self.config.batch_size,
            collate_fn=_collate,
        )
        for batch in loader:
            pixels = batch["pixels"].to(self.device)
            recon, indices = reconstruct(self.vqvae, pixels)
            scores_psnr.append(psnr(recon, pixels).cpu())
            scores_ssim.append(ssim(recon, pixels).cpu())
            counts += torch.bincount(indices.flatten().cpu(), minlength=self.codes).float()
        self.vqvae.train()
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs[probs > 0] * probs[probs > 0].log()).sum()).item()
        return {
            "psnr": torch.cat(scores_psnr).mean().item(),
            "ssim": torch.cat(scores_ssim).mean().item(),
            "codebook_usage": (counts > 0).float().mean().item(),
            "perplexity": perplexity,
        }

    def save(self) -> Path:
        acc = self.accelerator

        def write(folder: Path) -> None:
            if not acc.is_main_process:
                return
            ckpt.save_tensors(self.vqvae.state_dict(), folder / "model.safetensors")
            ckpt.save_object(self.optimizer.state_dict(), folder / "optimizer.pt")
            ckpt.save_object(self.lr_scheduler.state_dict(), folder / "lr_scheduler.pt")
            extra = {"usage": self.usage}
            if self.discriminator is not None:
                ckpt.save_tensors(
                    acc.unwrap_model(self.discriminator).state_dict(), folder / "discriminator.safetensors"
                )
                ckpt.save_object(self.disc_optimizer.state_dict(), folder / "discriminator_optimizer.pt")
            tensors, values = ckpt.rng_state()
            ckpt.save_tensors(tensors | extra, folder / "rng.safetensors")
            ckpt.write_json(
                {"step": self.step, "fingerprint": self.fingerprint, "rng": values}, folder / ckpt.STATE_FILE
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
        self.vqvae.load_state_dict(ckpt.load_tensors(folder / "model.safetensors"), strict=True)
        self.optimizer.load_state_dict(ckpt.load_object(folder / "optimizer.pt"))
        self.lr_scheduler.load_state_dict(ckpt.load_object(folder / "lr_scheduler.pt"))
        if self.discriminator is not None:
            disc = self.accelerator.unwrap_model(self.discriminator)
            disc.load_state_dict(ckpt.load_tensors(folder / "discriminator.safetensors"))
            self.disc_optimizer.load_state_dict(ckpt.load_object(folder / "discriminator_optimizer.pt"))
        tensors = ckpt.load_tensors(folder / "rng.safetensors")
        self.usage = tensors.pop("usage")
        ckpt.set_rng_state(tensors, state["rng"])
        self.step = int(state["step"])

    def export(self) -> Path:
        """Save the VQ model (safetensors, diffusers layout) to `run_dir/export/vqvae`."""
        if self.accelerator.is_main_process:
            folder = self.export_dir / "vqvae"
            tmp = self.export_dir / ".tmp-vqvae"
            self.vqvae.save_pretrained(str(tmp), safe_serialization=True)
            if folder.exists():
                import shutil

                shutil.rmtree(folder)
            tmp.rename(folder)
        self.accelerator.wait_for_everyone()
        return self.export_dir / "vqvae"

    def close(self) -> None:
        """After a successful `run()`, on every rank: drop the distributed wrappers and end the process group
        (`engine.end_run`)."""
        acc = self.accelerator
        self.model = acc.unwrap_model(self.model)
        if self.discriminator is not None:
            self.discriminator, self.disc_optimizer = acc.unwrap_model(self.discriminator), None
        self.optimizer = self.lr_scheduler = None
        end_run(acc)

    def run(self) -> dict[str, float]:
        cfg, acc = self.config, self.accelerator
        if acc.is_main_process:
            ckpt.remove_partial(self.run_dir)
        logger = RunLogger(
            self.run_dir, self.step, cfg.max_steps, acc.is_main_process, cfg.log.tensorboard, cfg.log.progress
        )
        loader = iter(
            DataLoader(
                self.train_set,
                num_workers=cfg.data.num_workers,
                collate_fn=_collate,
                batch_sampler=PositionBatches(
                    self.step, cfg.batch_size, cfg.grad_accum, self.rank, self.world
                ),
            )
        )
        metrics: dict[str, float] = {}
        start = time.perf_counter()
        try:
            while self.step < cfg.max_steps:
                parts: dict[str, float] = {}
                for _ in range(cfg.grad_accum):
                    pixels = next(loader)["pixels"].to(self.device)
                    loss, parts, (recon, indices, latents) = self.losses(pixels, self.step)
                    acc.backward(loss / cfg.grad_accum)
                    self.usage += torch.bincount(indices.flatten().cpu(), minlength=self.codes)
                if cfg.optim.grad_clip > 0:
                    acc.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                parts["discriminator"], parts["restarted_codes"] = 0.0, 0.0
                if self.discriminator is not None and self.step >= cfg.loss.discriminator_start:
                    parts["discriminator"] = self._discriminator_step(pixels, recon)
                self.step += 1
                if cfg.dead_code_every and not cfg.decoder_only and self.step % cfg.dead_code_every == 0:
                    parts["restarted_codes"] = float(self.restart_dead_codes(latents))
                rate = self.step and cfg.batch_size * self.world * cfg.grad_accum / max(
                    time.perf_counter() - start, 1e-9
                )
                start = time.perf_counter()
                logger.advance(1, l1=parts["l1"], img_s=round(rate, 1))
                if self.step % cfg.log.every == 0:
                    logger.log(self.step, parts | {"lr": self.lr_scheduler.get_last_lr()[0]})
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    metrics = self.evaluate()
                    logger.log(self.step, metrics, table="eval")
                if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                    self.save()
            if not metrics or (cfg.eval_every and self.step % cfg.eval_every):
                metrics = self.evaluate()
                logger.log(self.step, metrics, table="eval")
            if cfg.checkpoint.every and self.step % cfg.checkpoint.every:
                self.save()
            self.export()
        finally:
            logger.close()
        if acc.is_main_process:
            (self.run_dir / "metrics.json").write_text(json.dumps(metrics | {"step": self.step}, indent=2))
        return metrics
