"""slice-trl: continual LoRA fine-tuning on TRL's SFTTrainer, with SLICE initialisation."""

__version__ = "0.1.0"

_LAZY = {
    "ContinualSFTConfig": "slice_trl.configs.config",
    "InitConfig": "slice_trl.configs.settings",
    "ReplayConfig": "slice_trl.configs.settings",
    "EvalConfig": "slice_trl.configs.settings",
    "StageContext": "slice_trl.strategies",
    "Strategy": "slice_trl.strategies",
    "ContinualSFTTrainer": "slice_trl.trainer.continual_sft_trainer",
    "SliceInitializer": "slice_trl.initializers",
    "LoraGAInitializer": "slice_trl.initializers",
    "LoramInitializer": "slice_trl.initializers",
    "VanillaInitializer": "slice_trl.initializers",
    "build_initializer": "slice_trl.initializers",
    "ReplaySampleProvider": "slice_trl.trainer.replay",
    "ResultsMatrix": "slice_trl.evaluation.results",
    "Task": "slice_trl.tasks.base",
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    # Lazy: `python -m slice_trl.mine --help` should not pay for importing trl.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slice_trl' has no attribute {name!r}")
