"""Throughput over a logging interval: tokens/s and milliseconds per step."""

import time


class ThroughputMeter:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.t0, self.steps, self.tokens = time.perf_counter(), 0, 0

    def update(self, tokens: int) -> None:
        self.steps += 1
        self.tokens += tokens

    def read(self) -> dict[str, float]:
        """Rates since the last reset; then resets. Call after a synchronising op (loss.item())."""
        dt = max(time.perf_counter() - self.t0, 1e-9)
        rates = {"tokens_per_s": self.tokens / dt, "step_ms": 1000 * dt / max(self.steps, 1)}
        self.reset()
        return rates
