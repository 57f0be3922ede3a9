"""Run the MHA and MLP of parallel-form blocks concurrently on one device.

In parallel-form blocks (``parallel``, ``fal``, ``fal_ladder``: ``BlockPlan.parallel_form`` in
falstudy.models.wiring) neither sublayer reads the other's output, so on a GPU they can run on
two CUDA streams (the paper's single-GPU throughput claim). ``concurrent_branches(model)`` sets
each such block's ``run_branches`` to ``StreamBranches``: the MLP on a side stream, the MHA on the
current one, joined before their sum. Autograd runs each backward op on its forward op's stream, so the
backward overlaps too.

On CPU there is nothing to overlap with streams; the same code runs with torch's no-op CPU
streams and is exactly the sequential computation (that is what the tests check). A
thread-based CPU variant was measured slower or no faster than sequential on this 2-core machine
(docs/parallel.md), so it is not offered. The CUDA path cannot be measured here (no GPU).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from falstudy.models.gpt import run_sequential
from falstudy.models.wiring import PARALLEL_FORM  # noqa: F401  (the roles whose blocks are switched)


class StreamBranches:
    """``run_branches`` for one block: ``second`` on a side stream, ``first`` on the current one."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.module = torch.get_device_module(self.device.type)  # torch.cuda, or torch.cpu (no-op streams)
        self.side = self.module.Stream() if self.device.type == "cuda" else None

    def __call__(self, first: Callable[[], torch.Tensor], second: Callable[[], torch.Tensor]):
        if self.side is None:  # CPU: no streams to overlap on; same order as run_sequential
            return first(), second()
        main = self.module.current_stream(self.device)
        # before launching ``first``: the side stream waits for the inputs only, not for the MHA
        self.side.wait_stream(main)
        a = first()  # launches are asynchronous: call order (and hook order) stays MHA, MLP
        with self.module.stream(self.side):
            b = second()
        main.wait_stream(self.side)
        b.record_stream(main)  # b's memory is used on main: don't let the allocator reuse it early
        return a, b

    def __deepcopy__(self, memo: dict) -> "StreamBranches":
        return StreamBranches(self.device)


def concurrent_branches(model: nn.Module, enabled: bool = True) -> int:
    """Overlap MHA and MLP in the model's parallel-form blocks (or undo it); returns how many
    blocks were switched. Inference and training both work; the numerics are unchanged."""
    device = next(model.parameters()).device
    n = 0
    for block in model.blocks:
        if block.plan.parallel_form:
            block.run_branches = StreamBranches(device) if enabled else run_sequential
            n += 1
    return n
