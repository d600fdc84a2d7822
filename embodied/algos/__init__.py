"""RL and supervised algorithms, one file each; importing this package registers them."""

from embodied.algos import grpo, o2o, ppo, residual, sft  # noqa: F401  (registration)
from embodied.algos.base import ALGOS, AlgoConfig, Algorithm, NonFiniteLossError

__all__ = ["ALGOS", "AlgoConfig", "Algorithm", "NonFiniteLossError"]
