"""The distributed engine: an accelerate `Accelerator` per run (DDP, FSDP, DeepSpeed as configured by
`accelerate launch` / `accelerate config`).
Several CPU processes (gloo): accelerate only picks its multi-CPU mode when asked for the CPU, so a run
started by
`accelerate launch --multi_gpu --num_processes N` (torchrun) on a machine without CUDA is told to use the CPU.
"""

from __future__ import annotations

import os


def make_accelerator(mixed_precision: str):
    """An Accelerator with this mixed precision. In a single process, a previous run's different setting (the
    accelerate state is a process-wide singleton) is reset first, so several runs can share a process."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, DistributedType

    shared = AcceleratorState._shared_state
    if shared and str(shared.get("_mixed_precision")) != mixed_precision:
        if AcceleratorState().distributed_type == DistributedType.NO:
            AcceleratorState._reset_state(reset_partial_state=True)
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or (
        world > 1 and not torch.cuda.is_available()
    )
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


def end_run(accelerator) -> None:
    """End a finished run on every rank: wait for the others, let accelerate drop its references to the prepared
    (DDP-wrapped) modules and optimizers, and destroy the process group. Call it once the trainer has dropped its
    own references to those wrappers. A gloo group that is still alive (a DDP wrapper keeps it so) when Python
    shuts down can abort the rank with "terminate called without an active exception": its worker threads
    release tensors while the interpreter is being torn down (pytorch/pytorch#190489)."""
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    accelerator.end_training()
