"""Views of a `BatchedEnv` through other libraries' environment interfaces.

Each adapter is a thin layer over one `BatchedEnv` (``adapter.batched_env``): it converts types
and names, never re-implements physics, rewards or resets.

- `GymVectorEnv`: a `gymnasium.vector.VectorEnv` with numpy arrays and gymnasium 1.x's
  same-step autoreset (``info["final_obs"]``), over a BatchedEnv of N envs.
- `GymEnv`: a single `gymnasium.Env` (a BatchedEnv with num_envs=1 underneath), registered for
  every task as ``gymnasium.make("embodied/<Task>-v0")``; ``gymnasium.make_vec`` of the same id
  builds a `GymVectorEnv` directly (no subprocesses).
- `RslRlVecEnv`: rsl_rl's ``VecEnv`` (``OnPolicyRunner`` ready), torch tensors and TensorDict
  observation groups.
- `SB3VecEnv`: stable-baselines3's ``VecEnv`` over a `GymVectorEnv`, flat float32 state
  observations (``MlpPolicy`` ready), SB3's ``terminal_observation`` / ``TimeLimit.truncated`` infos.

Observations keep LeRobot's feature names as keys: ``observation.state`` float32 (D_state,),
``observation.environment_state`` float32 (D_env,), and in rgb modes ``observation.images.<camera>``
uint8 (H, W, 3) and ``observation.depth.<camera>`` float32 (H, W) (leading N in batches). The
language instruction (``task``) is not an array; it is in ``info["task"]``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from sims.core import BatchedEnv, Obs, RenderSettings
from sims.registry import list_tasks, make

if TYPE_CHECKING:
    from sims.mujoco.render import TiledRenderer

GYM_NAMESPACE = "embodied"
RENDER_CAMERA = "front"


def gym_id(task: str) -> str:
    """The gymnasium id of a task: ``"embodied/PickCube-v0"``."""
    return f"{GYM_NAMESPACE}/{task}-v0"


def register_gymnasium_envs() -> None:
    """Register ``embodied/<Task>-v0`` for every task in `sims.list_tasks()` (idempotent; call it
    again after registering new tasks). Registration stores names only; nothing is imported."""
    for task in list_tasks():
        if gym_id(task) not in gymnasium.registry:
            gymnasium.register(
                id=gym_id(task),
                entry_point="sims.adapters:GymEnv",
                vector_entry_point="sims.adapters:make_vector_env",
                kwargs={"task": task},
                # No TimeLimit wrapper: the BatchedEnv truncates at its own max_episode_steps
                # (pass `max_episode_steps` to `gymnasium.make_vec`, or as `gymnasium.make(...,
                # max_episode_steps=k)` for an extra TimeLimit that can only shorten episodes).
                max_episode_steps=None,
            )


# ---------------------------------------------------------------------------- conversions
def _features(obs: Obs) -> list[str]:
    """The array features of an observation batch: every key but ``task``, sorted."""
    return sorted(key for key in obs if key != "task")


def _box(array: np.ndarray | torch.Tensor) -> spaces.Box:
    """The space of one env's feature: uint8 images in [0, 255], floats unbounded."""
    shape = tuple(array.shape)
    if array.dtype in (np.uint8, torch.uint8):
        return spaces.Box(0, 255, shape, np.uint8)
    return spaces.Box(-np.inf, np.inf, shape, np.float32)


def observation_space(obs: Obs, keys: list[str] | None = None) -> spaces.Dict:
    """The single-env Dict space of a batched observation's array features (or of `keys`)."""
    return spaces.Dict({key: _box(obs[key][0]) for key in (keys or _features(obs))})


def to_numpy(obs: Obs, keys: list[str]) -> dict[str, np.ndarray]:
    """numpy arrays (N, ...) of the features `keys` (on CPU: no copy)."""
    return {key: obs[key].detach().cpu().numpy() for key in keys}


# ---------------------------------------------------------------------------- vector env
class GymVectorEnv(gymnasium.vector.VectorEnv):
    """`gymnasium.vector.VectorEnv` over a `BatchedEnv` of N envs (numpy in, numpy out).

    Spaces: ``single_observation_space`` is a Dict of Box spaces, one per feature (see module
    docstring); ``single_action_space`` is Box(-1, 1, (A,), float32); ``observation_space`` and
    ``action_space`` are their batched forms with leading dim N.

    ``reset(seed=s)`` seeds env i from (s, i); ``options={"reset_mask": (N,) bool}`` resets only
    those envs. ``step(actions (N, A))`` returns obs (dict of (N, ...) arrays), rewards (N,)
    float32, terminations (N,) bool, truncations (N,) bool and info.

    Autoreset: `AutoresetMode.SAME_STEP`, as `SyncVectorEnv` reports it. An env whose episode
    ended is reset within the same step and its row of ``obs`` is already the next episode's
    first observation; ``info["final_obs"]`` is an object array (N,) holding, for those envs, the
    dict of the episode's last observation (None elsewhere), ``info["_final_obs"]`` (N,) bool marks
    them, and ``info["final_info"]`` holds their last ``success`` / ``unstable`` / ``task``
    (``info["_final_info"]`` is the same mask). Every step's info also has ``success`` (N,) bool,
    ``unstable`` (N,) bool and ``task`` (N,) str (the instruction of each env's current episode).

    Construction resets the env (with ``cfg.seed``) to read the observation shapes.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}
    single_observation_space: spaces.Dict
    single_action_space: spaces.Box

    def __init__(self, env: BatchedEnv):
        self.batched_env = env
        self.num_envs = env.num_envs
        self.render_mode = None
        obs = env.reset(seed=env.cfg.seed)
        self._keys = _features(obs)
        self.single_observation_space = observation_space(obs, self._keys)
        self.single_action_space = spaces.Box(-1.0, 1.0, (env.action_dim,), np.float32)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if seed is not None and not isinstance(seed, int | np.integer):
            raise TypeError(f"GymVectorEnv.reset takes one int seed (env i uses (seed, i)); got {seed!r}.")
        super().reset(seed=seed)
        env_ids = None
        if options and options.get("reset_mask") is not None:
            env_ids = torch.as_tensor(np.flatnonzero(options["reset_mask"]), device=self.batched_env.device)
        obs = self.batched_env.reset(seed=None if seed is None else int(seed), env_ids=env_ids)
        return to_numpy(obs, self._keys), {"task": np.asarray(obs["task"])}

    def step(
        self, actions: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        env = self.batched_env
        action = torch.as_tensor(np.asarray(actions, dtype=np.float32), device=env.device)
        obs, reward, terminated, truncated, binfo = env.step(action)
        success, unstable = binfo["success"].cpu().numpy(), binfo["unstable"].cpu().numpy()
        info: dict[str, Any] = {"success": success, "unstable": unstable, "task": np.asarray(obs["task"])}
        if "done" in binfo:
            done = binfo["done"].cpu().numpy()
            last = binfo["final_observation"]
            last_arrays = to_numpy(last, self._keys)
            final_obs = np.full(self.num_envs, None, dtype=object)
            for i in np.flatnonzero(done):
                final_obs[i] = {key: value[i] for key, value in last_arrays.items()}
            info["final_obs"], info["_final_obs"] = final_obs, done
            info["final_info"] = {"success": success, "unstable": unstable, "task": np.asarray(last["task"])}
            info["_final_info"] = done
        return (
            to_numpy(obs, self._keys),
            reward.cpu().numpy(),
            terminated.cpu().numpy(),
            truncated.cpu().numpy(),
            info,
        )

    def close_extras(self, **kwargs: Any) -> None:
        self.batched_env.close()


def make_vector_env(num_envs: int = 16, task: str = "PickCube", **overrides: Any) -> GymVectorEnv:
    """``gymnasium.make_vec("embodied/<Task>-v0", num_envs=N, **overrides)``: a `GymVectorEnv`
    over ``sims.make(task, num_envs=N, **overrides)`` (any `EnvConfig` field, e.g.
    ``max_episode_steps=3``)."""
    overrides.pop("render_mode", None)
    return GymVectorEnv(make(task, num_envs=num_envs, **overrides))


# ---------------------------------------------------------------------------- single env
class GymEnv(gymnasium.Env):
    """One env of a task as a `gymnasium.Env` (``gymnasium.make("embodied/PickCube-v0")``).

    Underneath is ``sims.make(task, num_envs=1, **overrides)``; `EnvConfig` fields pass through
    `gymnasium.make` (``obs_mode="rgb"``, ``controller="joint_delta"``, ``randomization=...``),
    except ``max_episode_steps``, which `gymnasium.make` takes for a TimeLimit wrapper of its
    own (that can only shorten episodes); ``GymEnv(task, max_episode_steps=k)`` sets the env's.

    Spaces: observation Dict of Box spaces, ``observation.state`` float32 (D_state,),
    ``observation.environment_state`` float32 (D_env,) and in rgb modes
    ``observation.images.<camera>`` uint8 (H, W, 3); action Box(-1, 1, (A,), float32).
    ``step`` returns obs, reward (float), terminated, truncated (bool) and info with ``success``,
    ``unstable`` (bool) and ``task`` (the episode's instruction; also in `reset`'s info).

    Seeding: ``reset(seed=s)`` seeds ``self.np_random``; every reset draws the BatchedEnv's seed
    from it, so a seeded reset and the unseeded resets after it are reproducible. Episodes are
    truncated at the task's ``max_episode_steps`` (no TimeLimit wrapper is needed). When an
    episode ends, the returned obs is its last observation; call `reset` before stepping on.

    Rendering (``render_mode="rgb_array"``): ``render()`` returns the front camera's uint8
    (H, W, 3) frame of the last returned observation. In rgb obs modes that is the observation's
    own image; otherwise the BatchedEnv renders the front camera at ``render_width`` x
    ``render_height`` with every step (dropped from the observation), so that the frame after the
    last step of an episode shows that step and not the automatic reset after it.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        task: str = "PickCube",
        render_mode: str | None = None,
        render_width: int = 256,
        render_height: int = 256,
        **overrides: Any,
    ):
        if overrides.pop("num_envs", 1) != 1:
            raise ValueError("GymEnv is one env; use gymnasium.make_vec or GymVectorEnv for several.")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'rgb_array'; got {render_mode!r}.")
        self.render_mode = render_mode
        obs_mode = overrides.get("obs_mode", "state")
        cameras = overrides.get("cameras", ("front", "wrist"))
        # With rendering on and no front image in the observations, the env also renders the
        # front camera at the render size; `_keys` (the observation space) leaves it out.
        self._render_key = f"observation.images.{RENDER_CAMERA}"
        extra_camera = render_mode is not None and (obs_mode == "state" or RENDER_CAMERA not in cameras)
        if extra_camera and obs_mode == "state":
            settings = dataclasses.replace(overrides.get("render", RenderSettings()), width=render_width, height=render_height)
            overrides.update(obs_mode="rgb", cameras=(RENDER_CAMERA,), render=settings)
        self.batched_env = make(task, num_envs=1, **overrides)
        self._render_on_demand = extra_camera and obs_mode != "state"  # rgb obs, no front camera
        self._render_size = (render_width, render_height)
        self._renderer: TiledRenderer | None = None
        self.metadata = {**self.metadata, "render_fps": self.batched_env.cfg.control_hz}

        obs = self.batched_env.reset(seed=self.batched_env.cfg.seed)
        keys = _features(obs)
        if obs_mode == "state":
            keys = [key for key in keys if not key.startswith(("observation.images.", "observation.depth."))]
        self._keys = keys
        self.observation_space = observation_space(obs, keys)
        self.action_space = spaces.Box(-1.0, 1.0, (self.batched_env.action_dim,), np.float32)
        self._frame: np.ndarray | None = None

    def _single(self, obs: Obs) -> dict[str, np.ndarray]:
        """Row 0 of every feature, copied (callers may keep and modify what they get)."""
        if self._render_key in obs:
            self._frame = obs[self._render_key][0].cpu().numpy().copy()
        return {key: obs[key][0].cpu().numpy().copy() for key in self._keys}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        obs = self.batched_env.reset(seed=int(self.np_random.integers(2**31 - 1)))
        return self._single(obs), {"task": obs["task"][0]}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        env = self.batched_env
        a = torch.as_tensor(np.asarray(action, dtype=np.float32).reshape(1, -1), device=env.device)
        obs, reward, terminated, truncated, info = env.step(a)
        if "final_observation" in info:  # the episode ended and the env reset itself
            obs = info["final_observation"]
        step_info = {"success": bool(info["success"][0]), "unstable": bool(info["unstable"][0]), "task": obs["task"][0]}
        return self._single(obs), float(reward[0]), bool(terminated[0]), bool(truncated[0]), step_info

    def render(self) -> np.ndarray | None:
        """The front camera's uint8 (H, W, 3) frame of the last returned observation."""
        if self.render_mode is None:
            gymnasium.logger.warn("render() called with render_mode=None; make the env with render_mode='rgb_array'.")
            return None
        if self._render_on_demand or self._frame is None:
            return self._render_now()
        return self._frame.copy()

    def _render_now(self) -> np.ndarray:
        """Render the front camera at the env's current state (rgb obs modes without it)."""
        from sims.mujoco.env import MujocoBatchedEnv
        from sims.mujoco.render import RenderConfig, TiledRenderer

        env = self.batched_env
        if not isinstance(env, MujocoBatchedEnv):
            raise NotImplementedError(
                f"GymEnv renders the {RENDER_CAMERA!r} camera itself on the MuJoCo backends only "
                f"(backend {env.cfg.backend!r}): observe it (cameras) and reset first."
            )
        if self._renderer is None:
            width, height = self._render_size
            self._renderer = TiledRenderer(env.model, 1, (RENDER_CAMERA,), RenderConfig(width=width, height=height))
        return self._renderer.render(env.batch)[RENDER_CAMERA][0].copy()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self.batched_env.close()


# ---------------------------------------------------------------------------- rsl_rl
DEFAULT_RSL_RL_GROUPS: dict[str, tuple[str, ...]] = {
    "policy": ("observation.state", "observation.environment_state"),
}


class RslRlVecEnv:
    """rsl_rl's ``VecEnv`` (rsl-rl-lib >= 3) over a `BatchedEnv`, for ``OnPolicyRunner``.

    It is registered as a virtual subclass of ``rsl_rl.env.VecEnv`` (an ABC) on first
    construction, so that importing `sims` does not import rsl_rl and tensordict (~4 s).

    Attributes:
        num_envs: N.  num_actions: A.  max_episode_length: the env's ``max_episode_steps``.
        episode_length_buf: long (N,), the steps of each env's current episode (the env's own
            counter: writing it, as ``learn(init_at_random_ep_len=True)`` does, moves truncation).
        device: the env's device.  cfg: the env's `EnvConfig` (rsl_rl's loggers store it).

    Observations are a TensorDict (batch size N) of groups; each group concatenates features
    along dim 1. `groups` maps group name -> feature names; the default is one group
    ``"policy"`` = [``observation.state``, ``observation.environment_state``], float32
    (N, D_state + D_env), which rsl_rl also uses for the critic unless the train config's
    ``obs_groups`` says otherwise. An image feature (uint8 (N, H, W, 3)) must be a group alone.

    ``step(actions (N, A))`` returns obs, rewards float32 (N,), dones long (N,) (terminated or
    truncated; the env has already reset them) and extras with ``time_outs`` bool (N,)
    (truncations, for value bootstrapping) and, when episodes ended, ``log`` with
    ``Episode/success_rate`` (the success flags of the finished episodes).

    Construction resets the env (with ``cfg.seed``) to have a first observation.
    """

    def __init__(self, env: BatchedEnv, groups: dict[str, tuple[str, ...]] | None = None):
        from rsl_rl.env import VecEnv

        VecEnv.register(RslRlVecEnv)
        self.batched_env = env
        self.num_envs = env.num_envs
        self.num_actions = env.action_dim
        self.max_episode_length = env.max_episode_steps
        self.device = env.device
        self.cfg = env.cfg
        self.groups = dict(groups or DEFAULT_RSL_RL_GROUPS)
        self._obs = self._group(env.reset(seed=env.cfg.seed))

    @property
    def episode_length_buf(self) -> torch.Tensor:
        """long (N,): steps taken in each env's current episode."""
        return self.batched_env.elapsed_steps

    @episode_length_buf.setter
    def episode_length_buf(self, value: torch.Tensor) -> None:
        self.batched_env.elapsed_steps.copy_(value)

    def _group(self, obs: Obs):
        from tensordict import TensorDict

        groups = {
            name: obs[keys[0]] if len(keys) == 1 else torch.cat([obs[key] for key in keys], dim=1)
            for name, keys in self.groups.items()
        }
        return TensorDict(groups, batch_size=[self.num_envs], device=self.device)

    def get_observations(self):
        """The current observation groups, a TensorDict with batch size N."""
        return self._obs

    def step(self, actions: torch.Tensor):
        obs, reward, terminated, truncated, info = self.batched_env.step(actions)
        self._obs = self._group(obs)
        done = terminated | truncated
        extras: dict[str, Any] = {"time_outs": truncated}
        if "done" in info:
            extras["log"] = {"Episode/success_rate": info["success"][done].float()}
        return self._obs, reward, done.long(), extras

    def close(self) -> None:
        self.batched_env.close()


# ---------------------------------------------------------------------------- stable-baselines3
DEFAULT_SB3_KEYS: tuple[str, ...] = ("observation.state", "observation.environment_state")


def __getattr__(name: str) -> Any:
    """``SB3VecEnv`` subclasses stable-baselines3's ``VecEnv``; the class is made on first access
    (``from sims.adapters import SB3VecEnv``), so that importing `sims` does not import
    stable-baselines3 (~1 s)."""
    if name == "SB3VecEnv":
        return _sb3_vec_env_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _sb3_vec_env_class() -> type:
    from stable_baselines3.common.vec_env import VecEnv

    class SB3VecEnv(VecEnv):
        """stable-baselines3's ``VecEnv`` over a `BatchedEnv` of N envs (through a `GymVectorEnv`).

        Observations: the features `keys` (default ``observation.state`` and
        ``observation.environment_state``) flattened and concatenated, float32 (N, D) in an
        unbounded Box (D,), so that SB3's ``MlpPolicy`` (and ``VecNormalize``) take them as they
        are. Actions: float32 (N, A) in Box(-1, 1, (A,)).

        ``step_wait`` returns obs (N, D), rewards float32 (N,), dones bool (N,) (terminated or
        truncated; those envs were already reset, as SB3 expects) and a list of N info dicts; an
        env whose episode ended has ``terminal_observation`` (D,), ``TimeLimit.truncated`` (a
        truncation that is not a termination: SB3 bootstraps its value) and ``is_success`` (the
        success flag at the episode's last step). ``seed(s)`` then ``reset()`` seeds env i from
        (s, i), as `GymVectorEnv.reset` does; ``reset_infos`` hold each env's instruction.

        ``get_attr`` reads the `GymVectorEnv` (one value repeated per index); ``set_attr`` and
        ``env_method`` are not supported: there are no per-env Python objects to reach.
        """

        def __init__(self, env: BatchedEnv, keys: tuple[str, ...] = DEFAULT_SB3_KEYS):
            self.vector_env = GymVectorEnv(env)
            self.batched_env = env
            space = self.vector_env.single_observation_space
            missing = [key for key in keys if key not in space.spaces]
            if missing or not keys:
                raise ValueError(
                    f"SB3VecEnv keys {missing or keys} are not features of this env; "
                    f"it has {list(space.spaces)}."
                )
            self.keys = tuple(keys)
            dim = sum(spaces.flatdim(space[key]) for key in self.keys)
            self._actions: np.ndarray | None = None
            observation_space = spaces.Box(-np.inf, np.inf, (dim,), np.float32)
            super().__init__(env.num_envs, observation_space, self.vector_env.single_action_space)

        def _flat(self, obs: dict[str, np.ndarray]) -> np.ndarray:
            """(B, D) float32: the features `keys` of a batch (B, ...), flattened and concatenated."""
            features = [obs[key].reshape(len(obs[key]), -1) for key in self.keys]
            return np.concatenate(features, axis=1, dtype=np.float32)

        def reset(self) -> np.ndarray:
            # SB3's seed(s) gives env i the seed s + i; the batched env seeds env i from (s, i).
            obs, info = self.vector_env.reset(seed=self._seeds[0])
            self._reset_seeds()
            self._reset_options()
            self.reset_infos = [{"task": task} for task in info["task"]]
            return self._flat(obs)

        def step_async(self, actions: np.ndarray) -> None:
            self._actions = actions

        def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
            if self._actions is None:
                raise RuntimeError("SB3VecEnv.step_wait called without step_async.")
            obs, reward, terminated, truncated, info = self.vector_env.step(self._actions)
            self._actions = None
            done = terminated | truncated
            infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
            for i in np.flatnonzero(done):
                last = {key: value[None] for key, value in info["final_obs"][i].items()}
                infos[i] = {
                    "terminal_observation": self._flat(last)[0],
                    "TimeLimit.truncated": bool(truncated[i] and not terminated[i]),
                    "is_success": bool(info["final_info"]["success"][i]),
                }
            return self._flat(obs), reward, done, infos

        def close(self) -> None:
            self.vector_env.close()

        def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
            return [getattr(self.vector_env, attr_name)] * len(list(self._get_indices(indices)))

        def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
            raise NotImplementedError(
                f"SB3VecEnv cannot set {attr_name!r} per env; change adapter.batched_env instead."
            )

        def env_method(
            self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any
        ) -> list:
            raise NotImplementedError(
                f"SB3VecEnv cannot call {method_name!r} per env; call adapter.batched_env instead."
            )

        def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
            return [False] * len(list(self._get_indices(indices)))

    return SB3VecEnv


register_gymnasium_envs()
