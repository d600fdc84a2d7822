"""Policies as the deployment runner sees them: observation in, action chunk out.

`LocalPolicy` runs a checkpoint in this process; `real_robot.client.PolicyClient` asks a
`PolicyServer` for the same thing over a websocket. Both give `metadata` (the features the
policy reads, its action chunk length, the control rate) and ``infer(obs) -> (T, A)``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from real_robot.protocol import SCHEMA_VERSION, check_observation
from real_robot.robot import to_policy_batch


def resolve_policy_dir(path: str | Path) -> Path:
    """A saved policy folder (config.json + model.safetensors) from a policy folder, a
    checkpoint folder (``.../iter_N`` with ``policy/``) or a run directory (its latest checkpoint)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / "policy" / "config.json").is_file():
        return path / "policy"
    if (path / "config.yaml").is_file():
        from embodied.runner.checkpoint import latest_checkpoint

        return latest_checkpoint(path) / "policy"
    raise FileNotFoundError(
        f"{str(path)!r} is neither a policy folder (config.json), a checkpoint (policy/) nor a run directory (config.yaml)."
    )


def load_policy(path: str | Path, torch_threads: int = 1):
    """`Policy.from_pretrained` on whatever `resolve_policy_dir` finds, in eval mode."""
    import policies  # noqa: F401  (registers every policy kind)
    from policies.base import Policy

    if torch_threads:
        torch.set_num_threads(torch_threads)
    policy = Policy.from_pretrained(resolve_policy_dir(path))
    policy.eval()
    return policy


def policy_metadata(policy, control_hz: float) -> dict[str, Any]:
    """What a server announces on connect: the features read, chunk length, control rate."""
    try:
        spec = policy.feature_spec()
        features: dict[str, Any] = {key: [h, w, 3] for key, (h, w) in spec.images.items()}
        features.update({key: None for key in spec.vectors})
        vector_dim, action_dim, chunk = spec.vector_dim, spec.action_dim, spec.chunk_size
    except NotImplementedError:
        features, vector_dim = {}, None
        action_dim, chunk = getattr(policy.config, "action_dim", None), policy.chunk_size
    return {
        "schema": SCHEMA_VERSION, "policy": policy.kind, "features": features, "vector_dim": vector_dim,
        "action_dim": action_dim, "chunk_size": chunk, "control_hz": control_hz,
    }


class LocalPolicy:
    """A policy in this process: ``infer(obs) -> (T, A) float32`` for one robot observation."""

    def __init__(self, policy, control_hz: float = 20.0, deterministic: bool = True):
        self.policy = policy
        self.deterministic = deterministic
        self.metadata = policy_metadata(policy, control_hz)
        self._lock = threading.Lock()

    @classmethod
    def from_path(cls, path: str | Path, control_hz: float = 20.0, deterministic: bool = True) -> LocalPolicy:
        return cls(load_policy(path), control_hz, deterministic)

    def infer(self, obs: dict[str, Any]) -> np.ndarray:
        features = {k: v for k, v in obs.items() if k.startswith("observation.") or k == "task"}
        check_observation({k: np.asarray(v) if k != "task" else v for k, v in features.items()}, self.metadata["features"])
        with self._lock, torch.no_grad():
            chunk = self.policy.act(to_policy_batch(features), deterministic=self.deterministic).action
        return chunk[0].cpu().numpy().astype(np.float32)

    def reset(self) -> None:
        """A new episode: the policy forgets per-episode state (a residual's base chunk in flight)."""
        with self._lock:
            self.policy.reset()

    def close(self) -> None:
        pass
