"""The training engine: the loop, its hooks, evaluation during training, schedules and the run record."""

from reid.engine.schedulers import ConstantLR, WarmupCosineLR, WarmupMultiStepLR

__all__ = ["ConstantLR", "WarmupCosineLR", "WarmupMultiStepLR"]
