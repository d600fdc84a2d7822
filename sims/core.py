"""The batched environment contract shared by every simulator backend.

Every value crossing this boundary is a batched torch tensor on `env.device`, named with
LeRobot's feature names so that env observations, dataset frames and robot observations
share one vocabulary:

- ``observation.state``             float32 (N, D_state): robot proprioception
- ``observation.environment_state`` float32 (N, D_env): privileged object / goal state
- ``observation.images.<camera>``   uint8 (N, H, W, 3) when ``obs_mode`` has "rgb"
- ``observation.depth.<camera>``    float32 (N, H, W) metres when ``obs_mode`` is "rgbd"
- ``task``                          list[str] of N language instructions
"""

from __future__ import annotations

import abc
import dataclasses
import difflib
from collections.abc import Sequence
from typing import Any

import torch

Obs = dict[str, Any]
"""An observation batch: tensor features keyed by LeRobot names plus ``task`` (list[str])."""

OBS_MODES = ("state", "rgb", "rgbd")
REWARD_MODES = ("dense", "sparse")


def closest(name: str, valid: Sequence[str]) -> str:
    """A ' Did you mean ...?' hint for a misspelt name, or ''."""
    matches = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""


def check_choice(kind: str, name: str, valid: Sequence[str]) -> None:
    """Raise ValueError naming `name` and the valid choices unless `name` is one of them."""
    if name not in valid:
        raise ValueError(f"Unknown {kind} {name!r}.{closest(name, valid)} Valid: {', '.join(valid)}.")


@dataclasses.dataclass
class RandomizationConfig:
    """Domain randomization, each term switchable. Object poses are part of every task's
    initial-state distribution; `object_pose` widens it (rotations, larger ranges)."""

    enabled: bool = False
    object_pose: bool = True
    colors: bool = True  # objects keep their hue (instructions name it); the table any colour
    lighting: bool = True
    camera_pose: bool = True
    physics: bool = True  # friction and mass
    camera_pos_jitter: float = 0.02  # metres, uniform per axis
    camera_rot_jitter: float = 0.05  # radians, uniform per axis
    friction_range: tuple[float, float] = (0.7, 1.3)  # scale of the nominal sliding friction
    mass_range: tuple[float, float] = (0.7, 1.5)  # scale of the nominal object mass
    light_range: tuple[float, float] = (0.6, 1.4)  # scale of the nominal diffuse light


@dataclasses.dataclass
class RenderSettings:
    """Visual quality of camera observations."""

    width: int = 64
    height: int = 64
    shadows: bool = False
    shadow_size: int = 512
    reflections: bool = False
    processes: int = 1  # processes drawing shares of the envs, this one included (sims/mujoco/render.py)


@dataclasses.dataclass
class EnvConfig:
    """Everything that defines a batched environment. Validated by `sims.make`."""

    task: str = "PickCube"
    num_envs: int = 16
    backend: str = "mujoco"
    device: str = "cpu"
    controller: str = "ee_delta"
    obs_mode: str = "state"
    cameras: tuple[str, ...] = ("front", "wrist")
    reward_mode: str = "dense"
    control_hz: float = 20.0
    max_episode_steps: int | None = None  # None: the task's default
    terminate_on_success: bool = True
    num_threads: int = 0  # physics threads; 0: one per core
    seed: int = 0
    first_env_index: int = 0  # this batch's envs are envs first_env_index.. of a larger one (seeds [seed, index])
    report_stages: bool = False  # info["stages"] every step (the evaluator turns it on; ~0.2 ms a step)
    render: RenderSettings = dataclasses.field(default_factory=RenderSettings)
    randomization: RandomizationConfig = dataclasses.field(default_factory=RandomizationConfig)


class BatchedEnv(abc.ABC):
    """N copies of one task, stepped together (isaacgym style).

    Attributes:
        num_envs: N.
        device: torch device of every returned tensor.
        action_dim: A; actions are float32 (N, A) in [-1, 1] (values outside are clipped).
        max_episode_steps: episodes are truncated after this many steps.
        elapsed_steps: integer (N,), the steps of each env's current episode (0 after a reset);
            the env's own counter, so writing it in place moves truncation.
        instructions: the task's language phrasings.
    """

    num_envs: int
    device: torch.device
    action_dim: int
    max_episode_steps: int
    elapsed_steps: torch.Tensor
    cfg: EnvConfig

    @abc.abstractmethod
    def reset(self, seed: int | None = None, env_ids: torch.Tensor | None = None) -> Obs:
        """Reset all envs (or `env_ids`) to fresh initial states; return the full batch's obs.

        With `seed`, env i's generator is reseeded from (seed, cfg.first_env_index + i): the
        same seed gives the same initial states whatever N is, and a batch split in parts
        (pipeline stages, env workers) draws what the whole batch would."""

    @abc.abstractmethod
    def step(self, action: torch.Tensor) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Apply (N, A) actions for one control step.

        Returns obs, reward (N,) float32, terminated (N,) bool, truncated (N,) bool, info with
        ``success`` (N,) bool, ``unstable`` (N,) bool (the physics diverged; the episode ends
        terminated) and, when any env finished, ``final_observation`` (the obs those envs
        reached before their automatic reset; rows of envs that did not finish equal `obs`)
        and ``done`` (N,) bool; with ``cfg.report_stages`` and a task with milestones
        (`Task.stages`), ``stages``: {name: (N,) bool} of the step's state, before any reset."""

    @abc.abstractmethod
    def get_state(self) -> dict[str, torch.Tensor]:
        """An exact snapshot of every env: each value has leading dim N."""

    @abc.abstractmethod
    def set_state(self, state: dict[str, torch.Tensor], env_ids: torch.Tensor | None = None) -> Obs:
        """Restore rows of a snapshot: row j of `state` goes to env `env_ids[j]`. Returns obs."""

    def get_rng_state(self) -> Any:
        """A picklable snapshot of the env's random generators, for the exact resumption of a
        training run (checkpoints): MuJoCo's is one generator state per env. Optional: backends
        without it raise NotImplementedError."""
        raise NotImplementedError(f"{type(self).__name__} cannot save its random generators.")

    def set_rng_state(self, states: Any) -> None:
        """Restore `get_rng_state`'s snapshot."""
        raise NotImplementedError(f"{type(self).__name__} cannot restore its random generators.")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release threads and rendering contexts."""
