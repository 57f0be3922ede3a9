"""falstudy: architecture ablation studies of transformer blocks, built around FAL.

    import falstudy
    result = falstudy.train(variant="fal", train__steps=200)
    df = falstudy.query("results/default", "SELECT * FROM metrics WHERE split = 'val'")

Heavy modules load on first use, so ``import falstudy`` stays cheap.
"""

__version__ = "0.1.0"

_LAZY = {
    "train": ("falstudy.train", "train"),
    "RunConfig": ("falstudy.config", "RunConfig"),
    "ModelConfig": ("falstudy.config", "ModelConfig"),
    "TrainConfig": ("falstudy.config", "TrainConfig"),
    "GPT": ("falstudy.models", "GPT"),
    "VARIANTS": ("falstudy.models", "VARIANTS"),
    "load_checkpoint": ("falstudy.models", "load_checkpoint"),
    "load_gpt2": ("falstudy.models.hf", "load_gpt2"),
    "RUN_PRESETS": ("falstudy.config", "RUN_PRESETS"),
    "prepare": ("falstudy.data", "prepare"),
    "run_probes": ("falstudy.probe", "run_probes"),
    "run_with_cache": ("falstudy.probe.cache", "run_with_cache"),
    "generate": ("falstudy.sampling", "generate"),
    "ingest": ("falstudy.store", "ingest"),
    "query": ("falstudy.store", "query"),
    "spool_query": ("falstudy.store", "spool_query"),
    "load_table": ("falstudy.store", "load_table"),
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'falstudy' has no attribute {name!r}")
