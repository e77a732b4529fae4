"""SamplerOptions: every enhanced-inference technique's settings in one frozen, validated value (SPEC section 7).

The default value is vanilla MaskGIT decoding; each field switches one technique on. Options are plain data: the
decoding loop reads them, and keeps whatever per-call state a technique needs in its own local variables.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

GUIDANCE_SCHEDULES = ("constant", "linear", "cosine")
ORDERS = ("confidence", "halton")
PRESETS = ("vanilla", "published")


@dataclass(frozen=True)
class SamplerOptions:
    """Settings of the enhanced sampler; `SamplerOptions()` is vanilla decoding.

    noise_reg: noise regularization strength; logits += strength * |cos(pi t_i / (N-1))| * N(0, 1) (published 2).
    differential: differential sampling; `differential_fraction` of the tokens (those with the lowest
        KL(p_i || p_{i-1})) are drawn from normalize(max(p_i - p_{i-1}, 1e-6)) (published 0.75).
    zigzag: masked Z-sampling: step, inversion with guidance `zigzag_guidance` (published 0), step again.
    guidance_schedule: "constant", or a "linear" / "cosine" ramp of the scale from 1 to its value over the steps.
    guidance_interval: (start, end) fractions of the steps in which guidance is applied at the full scale.
    guidance_outside: the share of the guidance kept outside `guidance_interval`: the scale there is
        1 + (s - 1) * guidance_outside (0: conditional only; 1: the full scale, as without an interval).
    order: "confidence" (MaskGIT) or "halton" (unmask in a fixed 2-D Halton order, Besnier et al. 2025).
    tome_ratio: TomeMGT: fraction of image tokens merged in the dual-stream blocks (0: off, published 0.25);
        `tome_reuse` blocks share one merge plan; `tome_seed` seeds the random destination in each 2x2 window.
    token_temperature: the guided logits are divided by it before the tokens are drawn and their confidence is
        taken (1: the reference sampler; below 1: fewer draws from the tails of the distribution).
    early_steps: the fraction of the steps that decodes the first half of the mask schedule, where the layout is
        decided (0.5: the plain schedule; above: fewer tokens committed per early step).
    late_token_temperature: the logits of the late steps (those that decode the second half of the mask schedule,
        step i >= early_steps * N, where outlines and textures are decided) are divided by it as well (1: off).
    """

    noise_reg: float = 0.0
    differential: bool = False
    differential_fraction: float = 0.75
    zigzag: bool = False
    zigzag_guidance: float = 0.0
    guidance_schedule: str = "constant"
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    guidance_outside: float = 0.0
    order: str = "confidence"
    tome_ratio: float = 0.0
    tome_reuse: int = 5
    tome_seed: int = 0
    token_temperature: float = 1.0
    early_steps: float = 0.5
    late_token_temperature: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "guidance_interval", tuple(float(v) for v in self.guidance_interval))
        _check(math.isfinite(self.noise_reg) and self.noise_reg >= 0, "noise_reg", "a finite number >= 0",
               self.noise_reg)
        _check(isinstance(self.differential, bool), "differential", "True or False", self.differential)
        _check(0.0 < self.differential_fraction <= 1.0, "differential_fraction", "in (0, 1]",
               self.differential_fraction)
        _check(isinstance(self.zigzag, bool), "zigzag", "True or False", self.zigzag)
        _check(math.isfinite(self.zigzag_guidance) and self.zigzag_guidance >= 0, "zigzag_guidance",
               "a finite number >= 0", self.zigzag_guidance)
        _check(self.guidance_schedule in GUIDANCE_SCHEDULES, "guidance_schedule", f"one of {GUIDANCE_SCHEDULES}",
               self.guidance_schedule)
        interval = self.guidance_interval
        _check(len(interval) == 2 and 0.0 <= interval[0] < interval[1] <= 1.0, "guidance_interval",
               "two fractions 0 <= start < end <= 1", interval)
        _check(_is_number(self.guidance_outside) and 0.0 <= self.guidance_outside <= 1.0, "guidance_outside",
               "a fraction in [0, 1]", self.guidance_outside)
        _check(self.order in ORDERS, "order", f"one of {ORDERS}", self.order)
        _check(0.0 <= self.tome_ratio < 1.0, "tome_ratio", "in [0, 1)", self.tome_ratio)
        _check(isinstance(self.tome_reuse, int) and self.tome_reuse >= 1, "tome_reuse", "an integer >= 1",
               self.tome_reuse)
        _check(isinstance(self.tome_seed, int), "tome_seed", "an integer", self.tome_seed)
        for name in ("token_temperature", "late_token_temperature"):
            value = getattr(self, name)
            _check(_is_number(value) and 0 < value < math.inf, name, "a finite number > 0", value)
        _check(_is_number(self.early_steps) and 0.0 < self.early_steps < 1.0, "early_steps", "a fraction in (0, 1)",
               self.early_steps)

    # ----- construction -------------------------------------------------------------------------------------------
    @classmethod
    def published(cls, **overrides) -> SamplerOptions:
        """The combination the Bag-of-Design-Choices paper reports: noise regularization (2), differential
        sampling (75%) and masked Z-sampling (inversion guidance 0)."""
        return cls(**{"noise_reg": 2.0, "differential": True, "zigzag": True, **overrides})

    @classmethod
    def from_dict(cls, values: dict) -> SamplerOptions:
        """From a mapping of field names (strings such as "true" or "0.5" are converted); an optional "preset"
        key ("vanilla" or "published") gives the starting point."""
        values = dict(values)
        preset = values.pop("preset", "vanilla")
        if preset not in PRESETS:
            raise ValueError(f"unknown sampler preset {preset!r}; choose one of {PRESETS}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"unknown sampler option(s) {unknown}; known: {sorted(fields)}")
        converted = {name: _convert(name, value, cls.__dataclass_fields__[name].default)
                     for name, value in values.items()}
        return cls.published(**converted) if preset == "published" else cls(**converted)

    @classmethod
    def parse(cls, text: str) -> SamplerOptions:
        """From "vanilla", "published", "key=value,key=value" (optionally starting with a preset name, e.g.
        "published,tome_ratio=0.25"), or the path of a JSON file holding such a mapping."""
        text = text.strip()
        if text.endswith(".json") and Path(text).is_file():
            return cls.from_dict(json.loads(Path(text).read_text()))
        values: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "=" in part:
                key, value = (s.strip() for s in part.split("=", 1))
                values[key] = value
            elif part in PRESETS:
                values["preset"] = part
            else:
                raise ValueError(f"cannot read sampler setting {part!r}: expected key=value or one of {PRESETS}")
        return cls.from_dict(values)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def changes(self) -> dict:
        """The fields that differ from vanilla (JSON-ready; `from_dict` of it gives these options back)."""
        vanilla = SamplerOptions().to_dict()
        return {k: v for k, v in self.to_dict().items() if v != vanilla[k]}

    def describe(self) -> str:
        """The fields that differ from vanilla, as "key=value,..." ("vanilla" when none)."""
        return ",".join(f"{k}={v}" for k, v in self.changes().items()) or "vanilla"

    # ----- per-step values ----------------------------------------------------------------------------------------
    def noise_sigma(self, step_index: int, num_steps: int) -> float:
        """sigma_i = strength * |cos(pi * t_i / (N - 1))| with t_i = N-1-i the countdown index."""
        if self.noise_reg == 0:
            return 0.0
        countdown = num_steps - 1 - step_index
        phase = countdown / (num_steps - 1) if num_steps > 1 else 0.0
        return self.noise_reg * abs(math.cos(math.pi * phase))

    def token_temperature_at(self, step_index: int, num_steps: int) -> float:
        """What step i divides the logits by: `token_temperature`, times `late_token_temperature` in the late
        steps (i / N >= early_steps: their input is past the middle of the mask schedule)."""
        late = step_index / num_steps >= self.early_steps
        return self.token_temperature * (self.late_token_temperature if late else 1.0)

    def guidance_at(self, step_index: int, num_steps: int, guidance_scale: float) -> float:
        """The guidance scale of step i: 1 (conditional only) when guidance is off; outside the interval
        1 + (s - 1) * guidance_outside; inside 1 + (s - 1) * w_i with w = 1 (constant), p (linear) or
        (1 - cos(pi p)) / 2 (cosine), p = i / (N-1)."""
        if guidance_scale <= 1.0:
            return 1.0
        progress = step_index / (num_steps - 1) if num_steps > 1 else 1.0
        start, end = self.guidance_interval
        inside = start <= step_index / num_steps < end
        if not inside:
            return 1.0 + (guidance_scale - 1.0) * self.guidance_outside
        if self.guidance_schedule == "constant":
            return guidance_scale
        weight = progress if self.guidance_schedule == "linear" else (1 - math.cos(math.pi * progress)) / 2
        return 1.0 + (guidance_scale - 1.0) * weight

    def needs_unconditional(self, guidance_scale: float) -> bool:
        """Whether some model call needs the negative-prompt branch."""
        return guidance_scale > 1.0 or (self.zigzag and self.zigzag_guidance != 1.0)


def _is_number(value) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(ok: bool, name: str, expected: str, value) -> None:
    if not ok:
        raise ValueError(f"sampler option {name} must be {expected}, got {value!r}")


def _convert(name: str, value, default):
    """A field value from a string (or pass other types through)."""
    if not isinstance(value, str):
        return tuple(value) if isinstance(default, tuple) else value
    try:
        if isinstance(default, bool):
            lowered = value.lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError
            return lowered in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            return tuple(float(v) for v in value.replace(":", " ").split())
    except ValueError:
        raise ValueError(f"sampler option {name}: cannot read {value!r}") from None
    return value
