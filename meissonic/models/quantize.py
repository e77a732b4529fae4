"""Post-training quantization of the transformer's Linear layers, in plain torch (SPEC section 7, SCQ).

Modes:
* "int8": weight-only, int8 weights with one scale per output channel (symmetric, absmax / 127);
* "fp8": weight-only, float8_e4m3fn weights with one scale per output channel (absmax / 448), where torch has it;
* "w4a8": SCQ-style: 4-bit weights packed two per byte, one scale per group of `group_size` input features, and
  8-bit per-tensor activations with separate calibrated scales for the unconditional and the conditional half of
  a classifier-free-guidance batch.

Weights are dequantized to the compute dtype on the fly (CPUs have no int4/fp8 matmul kernels; the saving is
memory). Every quantized layer still exposes `weight` (dequantized) and `bias`, so code that reads them directly
(fused projections) keeps working, weight-only in that case: activations are quantized where the layer itself
is called.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("int8", "fp8", "w4a8")
LAYOUTS = ("split", "cond", "uncond")  # the model batch: [uncond; cond], conditional only, unconditional only
INT8_MAX = 127.0
FP8_MAX = 448.0


def fp8_supported() -> bool:
    """Whether this torch can store and convert float8_e4m3fn tensors."""
    if not hasattr(torch, "float8_e4m3fn"):
        return False
    try:
        return bool(torch.ones(2).to(torch.float8_e4m3fn).float().eq(1).all())
    except (RuntimeError, TypeError):
        return False


class ActivationLayout:
    """Which halves of the guidance batch the current model call holds; set by the pipeline around each call."""

    def __init__(self) -> None:
        self.current = "cond"


@contextmanager
def activation_layout(model: nn.Module, layout: str) -> Iterator[None]:
    """Tell a W4A8-quantized (or calibrating) model which CFG halves its next calls hold; a no-op otherwise."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    holder = getattr(model, "_activation_layout", None)
    if holder is None:
        yield
        return
    previous, holder.current = holder.current, layout
    try:
        yield
    finally:
        holder.current = previous


def _halves(x: torch.Tensor, layout: str) -> list[tuple[int, torch.Tensor]]:
    """(scale index, rows) pairs: index 0 = unconditional, 1 = conditional."""
    if layout == "split" and x.shape[0] % 2 == 0:
        half = x.shape[0] // 2
        return [(0, x[:half]), (1, x[half:])]
    return [(0 if layout == "uncond" else 1, x)]


class QuantizedLinear(nn.Module):
    """Common part: shapes, bias, the dequantized `weight` and the forward."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compute_dtype = linear.weight.dtype
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def dequantize(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:
        return self.dequantize()

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantize_input(x), self.dequantize().to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Linear(QuantizedLinear):
    """Weight-only int8: int8 weights (out, in) and per-output-channel scales (out, 1) in the compute dtype."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / INT8_MAX
        self.register_buffer("qweight", torch.round(weight / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8))
        self.register_buffer("scale", scale.to(self.compute_dtype))

    def dequantize(self) -> torch.Tensor:
        return self.qweight.to(self.compute_dtype) * self.scale


class Fp8Linear(QuantizedLinear):
    """Weight-only fp8: float8_e4m3fn weights and per-output-channel scales in the compute dtype."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        if not fp8_supported():
            raise RuntimeError("this torch build cannot store float8_e4m3fn tensors; use int8")
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
        self.register_buffer("qweight", (weight / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn))
        self.register_buffer("scale", scale.to(self.compute_dtype))

    def dequantize(self) -> torch.Tensor:
        return self.qweight.to(self.compute_dtype) * self.scale


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """Signed 4-bit values in [-8, 7], (..., 2n) -> uint8 (..., n): element 2j in the low nibble, 2j+1 high."""
    nibbles = (values + 8).to(torch.uint8)
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_int4`: uint8 (..., n) -> int8 (..., 2n) in [-8, 7]."""
    low, high = (packed & 15).to(torch.int8) - 8, (packed >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=-1).flatten(-2)


class W4A8Linear(QuantizedLinear):
    """SCQ-style W4A8: packed 4-bit weights with a float32 scale per (output, group of input features), and
    per-tensor int8 fake-quantized activations with one scale per CFG half (`act_scale` [uncond, cond]; NaN
    until calibrated, meaning weights only)."""

    def __init__(self, linear: nn.Linear, group_size: int = 128, layout: ActivationLayout | None = None):
        super().__init__(linear)
        group = math.gcd(self.in_features, group_size)
        if group % 2:
            raise ValueError(f"in_features {self.in_features} has no even group size dividing {group_size}")
        self.group_size = group
        weight = linear.weight.detach().float().unflatten(1, (-1, group))  # (out, groups, group)
        scale = weight.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 7.0
        q = torch.round(weight / scale).clamp(-8, 7).to(torch.int8).flatten(1)
        self.register_buffer("qweight", pack_int4(q))
        self.register_buffer("scale", scale.squeeze(-1))
        self.register_buffer("act_scale", torch.full((2,), math.nan))
        self.layout = layout or ActivationLayout()

    def dequantize(self) -> torch.Tensor:
        q = unpack_int4(self.qweight).unflatten(1, (-1, self.group_size)).to(self.compute_dtype)
        return (q * self.scale.to(self.compute_dtype)[..., None]).flatten(1)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if bool(self.act_scale.isnan().any()):
            return x
        parts = []
        for index, rows in _halves(x, self.layout.current):
            scale = self.act_scale[index]
            parts.append((torch.round(rows.float() / scale).clamp(-INT8_MAX, INT8_MAX) * scale).to(x.dtype))
        return torch.cat(parts) if len(parts) > 1 else parts[0]


def weight_bytes(module: nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (each storage counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        key = (tensor.data_ptr(), tensor.numel())
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


@contextmanager
def observe_activations(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record, for every nn.Linear of `model`, the absolute maximum of its input per CFG half ([uncond, cond];
    the model's calls are taken as [uncond; cond] batches unless an `activation_layout` says otherwise)."""
    stats: dict[str, torch.Tensor] = {}
    holder = ActivationLayout()
    holder.current = "split"
    model._activation_layout = holder
    handles = []

    def observer(name: str):
        def hook(module, args):
            entry = stats.setdefault(name, torch.zeros(2))
            for index, rows in _halves(args[0], holder.current):
                entry[index] = max(entry[index].item(), rows.detach().abs().max().float().item())
        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_pre_hook(observer(name)))
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()
        del model._activation_layout


def quantize_model(
    model: nn.Module, mode: str, group_size: int = 128, activation_absmax: dict[str, torch.Tensor] | None = None
) -> dict:
    """Replace every nn.Linear of `model` in place by its quantized version; returns a report (bytes before and
    after, layer counts, the layers with calibrated activation scales)."""
    if mode not in MODES:
        raise ValueError(f"quantization mode must be one of {MODES}, got {mode!r}")
    if mode == "fp8" and not fp8_supported():
        raise ValueError("fp8 quantization needs torch.float8_e4m3fn, which this torch build lacks; use int8")
    if any(isinstance(m, QuantizedLinear) for m in model.modules()):
        raise ValueError("the model is already quantized; reload it to quantize differently")
    before = weight_bytes(model)
    layout = ActivationLayout()
    replaced, calibrated = 0, []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if mode == "int8":
            new: QuantizedLinear = Int8Linear(module)
        elif mode == "fp8":
            new = Fp8Linear(module)
        else:
            new = W4A8Linear(module, group_size, layout)
            absmax = (activation_absmax or {}).get(name)
            if absmax is not None and bool((absmax > 0).all()):
                new.act_scale.copy_(absmax / INT8_MAX)
                calibrated.append(name)
        new.to(module.weight.device)
        setattr(parent, child, new)
        replaced += 1
    if mode == "w4a8":
        model._activation_layout = layout
    return {"mode": mode, "layers": replaced, "bytes_before": before, "bytes_after": weight_bytes(model),
            "activation_calibrated": calibrated}
