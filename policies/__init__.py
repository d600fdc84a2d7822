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
    kind = config.kind
    if kind not in POLICIES:
        raise ValueError(f"Unknown policy kind {kind!r}; valid: {', '.join(POLICIES)}.")
    updates: dict[str, Any] = {}
    if getattr(config, "action_dim", 0) not in (0, action_dim):
        raise ValueError(f"policy.action_dim is {config.action_dim}, but the env has {action_dim} action dimensions.")
    if getattr(config, "action_dim", None) == 0:
        updates["action_dim"] = action_dim
    if getattr(config, "obs_dim", None) == 0:
        updates["obs_dim"] = flat_observation(obs, config.obs_keys).shape[1]
    if getattr(config, "state_dim", None) == 0 and config.state_keys:
        updates["state_dim"] = flat_observation(obs, config.state_keys).shape[1]
    return POLICIES[kind](dataclasses.replace(config, **updates))


__all__ = ["POLICIES", "CNNPolicyConfig", "MLPPolicyConfig", "Policy", "PolicyOutput", "make_policy", "register_policy"]
