"""Will a model fit? Counted on the meta device (no memory), before anything is allocated.

Training needs the weights, their gradients and AdamW's two moments: 16 bytes per parameter in
float32, before activations. A model whose 16 bytes a parameter exceed the memory available to
its device is refused in one line with its size, instead of failing deep in the allocator.
"""

from __future__ import annotations

from typing import Any

from falstudy.errors import FalstudyError

BYTES_PER_PARAM = 16  # fp32 weight + gradient + AdamW exp_avg + exp_avg_sq


def count_params(model_cfg: Any) -> int:
    import torch

    from falstudy.models import GPT

    with torch.device("meta"):
        model = GPT(model_cfg)
    return model.num_params()


def available_bytes(device: Any) -> int | None:
    """Memory free for tensors on ``device`` (CPU: MemAvailable; CUDA: the driver's free), or None."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # no driver: the allocation will tell
            return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def check_fits(model_cfg: Any, device: Any, *, shards: int = 1) -> int:
    """Refuse a model whose training state would not fit in ``device``'s memory; returns the
    parameter count. ``shards``: tensor-parallel ranks sharing it (each holds about 1/shards)."""
    n = count_params(model_cfg)
    need = n * BYTES_PER_PARAM // max(1, shards)
    have = available_bytes(device)
    if have is not None and need > have:
        raise FalstudyError(
            f"the model has {n:,} parameters: training it needs {_gb(need)} for weights, gradients and AdamW "
            f"state ({BYTES_PER_PARAM} bytes a parameter{f' over {shards} shards' if shards > 1 else ''}), "
            f"but {device} has {_gb(have)} available; lower model.n_layer, model.n_embd or data vocab_size"
        )
    return n
