"""Batched simulation: the `BatchedEnv` contract, its backends, and the tabletop task suite."""

from sims import adapters as _adapters  # noqa: F401  (registers the gymnasium ids "embodied/<Task>-v0")
from sims.core import BatchedEnv, EnvConfig, RandomizationConfig, RenderSettings
from sims.registry import BACKENDS, list_tasks, make, scripted_expert

__all__ = ["BACKENDS", "BatchedEnv", "EnvConfig", "RandomizationConfig", "RenderSettings", "list_tasks", "make", "scripted_expert"]
