"""``falstudy bench gpu``: the one prepared device check (docs/gpu.md).

``cases``: training throughput and memory of the wirings (eager, two streams, torch.compile);
``checks``: numerics (device vs CPU loss curves, streams on/off) and the one-GPU NCCL and
CUDA-event checks; ``bench``: runs every section within a time budget and writes the figures.
Nothing here imports duckdb, optuna or nnsight (the GPU machine has none of them).
"""
