"""On-policy reinforcement of a text-to-image MGT on the world detector's reward: a group-relative policy gradient
over the sampler's own decoding trajectories, with a KL penalty towards the starting weights.

Each update draws `prompts_per_update` training-split prompts `samples_per_prompt` times with the model's default
sampler and scores every image against its prompt (`world_reward`). The advantage of an image is its reward minus
the mean reward of its prompt's draws, so only what distinguishes a prompt's better draws from its worse ones is
reinforced. A decoding step's action is the set of tokens it committed; its log-probability is taken under the
distribution they were drawn from (the logits divided by the step's token temperature), the choice of positions
being treated as given. One gradient step per batch of samples, so the samples are always the current policy's
and no importance ratio is needed. To save time an update back-propagates through `steps_per_update` of the N
decoding steps, chosen at random and weighted N / steps_per_update (an unbiased estimate of the whole
trajectory's gradient); `step_fraction` < 1 restricts the choice to the first steps, where the layout is drawn
(a few tokens per step, so each token's share of the credit is larger).

Everything random in update u is seeded by (seed, u), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..eval.world import TaskResult, check_task
from ..world import detect, training_tasks
from .checkpoint import (
    latest_checkpoint,
    load_object,
    load_tensors,
    read_json,
    remove_partial,
    save_object,
    save_tensors,
    write_checkpoint,
)
from .objective import masked_kl_sum, step_generator

EXPORT = "export"
LOG = "log.jsonl"


@dataclass(frozen=True)
class PolicySettings:
    """What a run is (fixed at its start; a resumed run must be given the same values, `updates` aside)."""

    updates: int = 150
    prompts_per_update: int = 6
    samples_per_prompt: int = 4
    steps_per_update: int = 4
    step_fraction: float = 1.0
    lr: float = 5e-5
    kl_beta: float = 0.05
    max_grad_norm: float = 1.0
    seed: int = 41
    save_every: int = 25

    def __post_init__(self) -> None:
        for name in ("updates", "prompts_per_update", "steps_per_update", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.samples_per_prompt < 2:
            raise ValueError(f"samples_per_prompt must be >= 2 (advantages compare draws of one prompt), "
                             f"got {self.samples_per_prompt}")
        if not 0.0 < self.step_fraction <= 1.0:
            raise ValueError(f"step_fraction must be in (0, 1], got {self.step_fraction}")
        for name in ("lr", "kl_beta", "max_grad_norm"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class Trajectory:
    """One batch of decoding runs: `grids[i]` (B, h, w) is the input of step i, `grids[-1]` the result;
    `temperatures[i]` is what step i divided its logits by before drawing."""

    grids: list[torch.Tensor]
    temperatures: list[float]


def world_reward(result: TaskResult) -> float:
    """Half for the image being fully right, half for the share of the prompt's checks it passes (partial credit
    ranks a nearly right draw above a wrong one)."""
    checks = list(result.checks.values())
    return 0.5 * float(result.correct) + 0.5 * sum(checks) / len(checks)


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """rewards (B,) in groups of `group_size` consecutive draws of one prompt -> reward minus its group's mean."""
    groups = rewards.view(-1, group_size)
    return (groups - groups.mean(dim=1, keepdim=True)).reshape(-1)


@torch.no_grad()
def sample_trajectories(pipeline, prompts: list[str], generators: list[torch.Generator]) -> Trajectory:
    """Decode `prompts` with the pipeline's defaults and keep the grid before and after every step."""
    grids: list[torch.Tensor] = []

    def record(_pipe, _step: int, _timestep: int, values: dict) -> dict:
        grids.append(values["tokens"].clone())
        return {}

    pipeline(prompts, generator=generators, output_type="tokens", callback_on_step_end=record)
    steps, _ = pipeline.sampling_defaults(None, None)
    options = pipeline.default_sampler_options
    start = torch.full_like(grids[0], pipeline.transformer.mask_token_id)
    return Trajectory([start, *grids], [options.token_temperature_at(i, steps) for i in range(steps)])


def committed_log_probs(logits: torch.Tensor, before: torch.Tensor, after: torch.Tensor, mask_id: int,
                        temperature: float) -> torch.Tensor:
    """Per sample (B,), the summed log-probability under softmax(logits / temperature) (logits (B, C, h, w)) of
    the tokens a step committed: masked in `before`, set in `after` (both (B, h, w))."""
    committed = (before == mask_id) & (after != mask_id)
    log_probs = (logits.float() / temperature).log_softmax(dim=1)
    picked = log_probs.gather(1, after.long().clamp(max=logits.shape[1] - 1)[:, None]).squeeze(1)
    return (picked * committed).flatten(1).sum(dim=1)


class PolicyTrainer:
    """Runs `settings.updates` policy-gradient updates of `model_folder`'s transformer into `run_dir`."""

    def __init__(self, model_folder: str | Path, run_dir: str | Path, settings: PolicySettings,
                 resume: bool = False, reward: Callable[[TaskResult], float] = world_reward):
        from ..models.transformer import MeissonicTransformer2DModel
        from ..pipelines import MeissonicPipeline

        self.model_folder, self.run_dir = Path(model_folder), Path(run_dir)
        self.settings, self.reward = settings, reward
        if self.run_dir.exists() and not resume:
            raise FileExistsError(f"{self.run_dir} exists; pass resume to continue it or choose a new folder")
        self.pipe = MeissonicPipeline.from_pretrained(self.model_folder, torch_dtype=torch.bfloat16)
        self.pipe.set_progress_bar_config(disable=True)
        self.policy = MeissonicTransformer2DModel.from_pretrained(self.model_folder / "transformer",
                                                                  torch_dtype=torch.float32).train()
        self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=settings.lr, betas=(0.9, 0.99),
                                           weight_decay=0.0)
        self.update = 0
        self.tasks = training_tasks(settings.updates * settings.prompts_per_update, settings.seed)
        if resume and self.run_dir.exists():
            self._load()
        else:
            self.run_dir.mkdir(parents=True)

    # ----- one update -----
    def step(self) -> dict:
        """Sample this update's prompts, score them and take one gradient step; returns the log row."""
        s, u = self.settings, self.update
        tasks = self.tasks[u * s.prompts_per_update:(u + 1) * s.prompts_per_update]
        prompts = [t.text for t in tasks for _ in range(s.samples_per_prompt)]
        started = time.perf_counter()
        self.pipe.transformer.load_state_dict(self.policy.state_dict())
        generators = [step_generator(s.seed, u, stream=1 + b) for b in range(len(prompts))]
        trajectory = sample_trajectories(self.pipe, prompts, generators)
        images = self.pipe.to_output(trajectory.grids[-1], "pil").images
        results = [check_task(tasks[b // s.samples_per_prompt], detect(image)) for b, image in enumerate(images)]
        rewards = torch.tensor([self.reward(r) for r in results])
        sampled = time.perf_counter()
        num_steps = max(1, round(s.step_fraction * len(trajectory.temperatures)))  # the steps that may be chosen
        chosen = torch.randperm(num_steps, generator=step_generator(s.seed, u))[:s.steps_per_update].tolist()
        row = self.learn(trajectory, prompts, group_advantages(rewards, s.samples_per_prompt), chosen,
                         num_steps / len(chosen))
        self.update += 1
        return {
            "update": self.update, "reward": round(rewards.mean().item(), 4),
            "correct": round(sum(r.correct for r in results) / len(results), 4), **row,
            "sample_s": round(sampled - started, 2), "train_s": round(time.perf_counter() - sampled, 2),
            "task_types": [t.task_type for t in tasks],
        }

    def learn(self, trajectory: Trajectory, prompts: list[str], advantages: torch.Tensor, steps: list[int],
              weight: float) -> dict:
        """One optimizer step on -sum_b A_b * weight * sum_{i in steps} log pi(step i's committed tokens of b), per
        image token, plus kl_beta times the mean KL(reference || policy) over the steps' masked positions."""
        batch, seq_len, num_steps = len(prompts), trajectory.grids[0][0].numel(), len(trajectory.temperatures)
        mask_id = self.policy.mask_token_id
        with torch.no_grad():
            states, pooled = (x.float() for x in self.pipe.encode_prompt(prompts))
            height, width = (side * self.pipe.vq_scale for side in trajectory.grids[0].shape[-2:])
            micro = self.pipe.micro_conditions(batch, height, width, None, (0, 0), 6.0).float()
        self.optimizer.zero_grad(set_to_none=True)
        policy_loss = kl_mean = 0.0
        for i in steps:
            before, after = trajectory.grids[i], trajectory.grids[i + 1]
            masked = (before == mask_id).flatten(1)
            timestep = self.pipe.model_timestep(i, num_steps, before)  # what the sampler fed the model at step i
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = self.policy(before, states, pooled, timestep, micro)
                with torch.no_grad():
                    reference = self.reference(before, states, pooled, timestep, micro)
            log_probs = committed_log_probs(logits, before, after, mask_id, trajectory.temperatures[i])
            loss_pg = -(advantages * log_probs).sum() * weight / (batch * seq_len)
            kl = masked_kl_sum(logits, reference, masked) / masked.sum().clamp(min=1)
            (loss_pg + self.settings.kl_beta * kl / len(steps)).backward()
            policy_loss += loss_pg.item()
            kl_mean += kl.item() / len(steps)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.settings.max_grad_norm).item()
        self.optimizer.step()
        return {"policy_loss": policy_loss, "kl": kl_mean, "grad_norm": grad_norm}

    def run(self, progress: Callable[[dict], None] | None = None) -> Path:
        """Train up to `settings.updates`, checkpointing every `save_every` updates; returns the export folder."""
        with open(self.run_dir / LOG, "a") as log:
            while self.update < self.settings.updates:
                row = self.step()
                log.write(json.dumps(row) + "\n")
                log.flush()
                if progress is not None:
                    progress(row)
                if self.update % self.settings.save_every == 0 or self.update == self.settings.updates:
                    self.save()
        return self.export()

    # ----- checkpoints and export -----
    def save(self) -> Path:
        def write(folder: Path) -> None:
            save_tensors(self.policy.state_dict(), folder / "transformer.safetensors")
            save_object(self.optimizer.state_dict(), folder / "optimizer.pt")
            (folder / "state.json").write_text(json.dumps(
                {"update": self.update, "settings": dataclasses.asdict(self.settings),
                 "model": str(self.model_folder)}, indent=2))

        return write_checkpoint(self.run_dir, self.update, write, keep_last=2)

    def _load(self) -> None:
        remove_partial(self.run_dir)
        folder = latest_checkpoint(self.run_dir)
        if folder is not None:
            state = read_json(folder / "state.json")
            if Path(state["model"]).resolve() != self.model_folder.resolve():
                raise ValueError(f"{self.run_dir} was started from {state['model']}, not {self.model_folder}")
            saved = {k: v for k, v in state["settings"].items() if k != "updates"}
            given = {k: v for k, v in dataclasses.asdict(self.settings).items() if k != "updates"}
            if saved != given:
                changed = sorted(k for k in given if saved.get(k) != given[k])
                raise ValueError(f"{self.run_dir} was started with other settings ({', '.join(changed)}): "
                                 f"{ {k: saved.get(k) for k in changed} }")
            self.policy.load_state_dict(load_tensors(folder / "transformer.safetensors"))
            self.optimizer.load_state_dict(load_object(folder / "optimizer.pt"))
            self.update = state["update"]
        log = self.run_dir / LOG
        if log.exists():  # drop rows of updates made after the checkpoint (they are made again)
            rows = [line for line in log.read_text().splitlines() if json.loads(line)["update"] <= self.update]
            log.write_text("".join(line + "\n" for line in rows))

    def export(self) -> Path:
        """The starting model's folder with the trained transformer (float32): `run_dir/export`."""
        folder = self.run_dir / EXPORT
        tmp = self.run_dir / ".tmp-export"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(self.model_folder, tmp, ignore=shutil.ignore_patterns("transformer"))
        self.policy.save_pretrained(tmp / "transformer")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        return folder
