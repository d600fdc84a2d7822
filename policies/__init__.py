"""Policy models: small MLP/CNN policies now; VLAs and LeRobot adapters in later layers."""

from __future__ import annotations

import dataclasses
from typing import Any

from policies import cnn, diffusion, lerobot_adapter, lerobot_flow_rl, mlp, residual, vla  # noqa: F401  (registration)
from policies.base import POLICIES, Policy, PolicyOutput, register_policy
from policies.cnn import CNNPolicyConfig
from policies.mlp import MLPPolicyConfig, flat_observation


def make_policy(config: Any, obs: dict[str, Any], action_dim: int) -> Policy:
    """Build the policy `config.kind` with its input/output sizes read off an observation."""
    if config.kind not in POLICIES:
        raise ValueError(f"Unknown policy kind {config.kind!r}; valid: {', '.join(POLICIES)}.")
    return POLICIES[config.kind](observed_sizes(config, obs, action_dim))


def observed_sizes(config: Any, obs: dict[str, Any], action_dim: int) -> Any:
    """`config` with the sizes it leaves at 0 (action, observation, state and critic input
    dimensions) read off an observation batch and the env's action dimension."""
    updates: dict[str, Any] = {}
    if getattr(config, "action_dim", 0) not in (0, action_dim):
        raise ValueError(f"policy.action_dim is {config.action_dim}, but the env has {action_dim} action dimensions.")
    if getattr(config, "action_dim", None) == 0:
        updates["action_dim"] = action_dim
    if getattr(config, "obs_dim", None) == 0:
        updates["obs_dim"] = flat_observation(obs, config.obs_keys).shape[1]
    if getattr(config, "state_dim", None) == 0 and config.state_keys:
        updates["state_dim"] = flat_observation(obs, config.state_keys).shape[1]
    if getattr(config, "critic_dim", None) == 0 and config.critic_keys:
        updates["critic_dim"] = flat_observation(obs, config.critic_keys).shape[1]
    return dataclasses.replace(config, **updates)


__all__ = ["POLICIES", "CNNPolicyConfig", "MLPPolicyConfig", "Policy", "PolicyOutput", "make_policy", "observed_sizes", "register_policy"]
