"""The MuJoCo CPU backend: N copies of a task stepped by `mujoco.batch.Batch` on a thread pool."""

from __future__ import annotations

import os

import mujoco
import mujoco.batch
import numpy as np
import torch

from sims.core import BatchedEnv, EnvConfig, Obs, check_choice
from sims.mujoco.controllers import CONTROLLERS
from sims.mujoco.scene import ARM_JOINTS, FINGER_JOINTS, REST_QPOS, build_spec
from sims.tasks.base import Task

_UNSTABLE_WARNINGS = (
    int(mujoco.mjtWarning.mjWARN_BADQACC),
    int(mujoco.mjtWarning.mjWARN_BADQPOS),
    int(mujoco.mjtWarning.mjWARN_BADQVEL),
)
_SUCCESS_BONUS = 1.0  # added to the dense reward on success; dense terms lie in [0, 1]
_RANDOMIZED_CAMERAS = ("front", "side")
_REST_NOISE = 0.02  # radians, uniform, on the arm's initial joint positions


class MujocoBatchedEnv(BatchedEnv):
    """`BatchedEnv` on `mujoco.batch.Batch` (CPU). See `sims.core.BatchedEnv` for the contract.

    Physics runs at the scene's timestep (5 ms); each control step applies the action and
    runs ``round(1 / (control_hz * timestep))`` substeps."""

    def __init__(self, cfg: EnvConfig, task: Task):
        self.cfg = cfg
        self.task = task
        self.num_envs = cfg.num_envs
        self.device = torch.device(cfg.device)
        self.model = build_spec(task.build).compile()
        self.substeps = max(1, round(1.0 / (cfg.control_hz * self.model.opt.timestep)))
        self.max_episode_steps = cfg.max_episode_steps or task.max_episode_steps
        self.instructions = task.instructions
        self.batch = self._make_batch()

        m = self.model
        self.arm_qpos_adr = np.array([m.joint(j).qposadr[0] for j in ARM_JOINTS])
        self.arm_dof_adr = np.array([m.joint(j).dofadr[0] for j in ARM_JOINTS])
        self.finger_qpos_adr = np.array([m.joint(j).qposadr[0] for j in FINGER_JOINTS])
        self.finger_dof_adr = np.array([m.joint(j).dofadr[0] for j in FINGER_JOINTS])
        self.arm_limits = m.jnt_range[[m.joint(j).id for j in ARM_JOINTS]].copy()
        self.hand_body_id = m.body("hand").id
        self.tcp_site_id = m.site("tcp").id
        self.camera_names = tuple(m.camera(i).name for i in range(m.ncam))

        b = self.batch
        # State views (writes are the next call's state) and derived outputs (current after
        # every call: we step with stage=mjSTAGE_POS).
        self.qpos, self.qvel, self.ctrl = b.bind("qpos"), b.bind("qvel"), b.bind("ctrl")
        self.mocap_pos, self.mocap_quat = b.bind("mocap_pos"), b.bind("mocap_quat")
        self.xpos, self.xquat, self.site_xpos = b.bind("xpos"), b.bind("xquat"), b.bind("site_xpos")
        self.cdof, self.subtree_com = b.bind("cdof"), b.bind("subtree_com")  # the ee_delta Jacobian

        check_choice("controller", cfg.controller, tuple(CONTROLLERS))
        self.controller = CONTROLLERS[cfg.controller](self)
        self.action_dim = self.controller.action_dim

        self.renderer = None
        if cfg.obs_mode != "state":
            from sims.mujoco.render import RenderConfig, TiledRenderer

            for camera in cfg.cameras:
                check_choice("camera", camera, self.camera_names)
            self.renderer = TiledRenderer(
                self.model,
                self.num_envs,
                cfg.cameras,
                RenderConfig(
                    width=cfg.render.width,
                    height=cfg.render.height,
                    shadows=cfg.render.shadows,
                    shadow_size=cfg.render.shadow_size,
                    reflections=cfg.render.reflections,
                    depth=cfg.obs_mode == "rgbd",
                    num_processes=cfg.render.processes,
                ),
            )

        n = self.num_envs
        self.elapsed_steps = torch.zeros(n, dtype=torch.long, device=self.device)
        self.instruction_index = torch.zeros(n, dtype=torch.long, device=self.device)
        self._warnings = np.zeros((n, len(_UNSTABLE_WARNINGS)), dtype=np.int64)
        self._rngs = [np.random.default_rng([cfg.seed, cfg.first_env_index + i]) for i in range(n)]
        self._nominal = {
            "geom_rgba": m.geom_rgba.copy(),
            "geom_friction": m.geom_friction.copy(),
            "body_mass": m.body_mass.copy(),
            "body_inertia": m.body_inertia.copy(),
            "light_diffuse": m.light_diffuse.copy(),
            "cam_pos": m.cam_pos.copy(),
            "cam_quat": m.cam_quat.copy(),
        }
        task.setup(self)
        self._refresh()
        self.reset(seed=cfg.seed)

    def _make_batch(self) -> mujoco.batch.Batch:
        """The physics engine: N simulations of `self.model` behind `mujoco.batch.Batch`'s
        interface (other backends return their own object with the same methods)."""
        nthread = self.cfg.num_threads or os.cpu_count() or 1
        return mujoco.batch.Batch(self.model, self.num_envs, min(nthread, self.num_envs))

    # ------------------------------------------------------------------ batched state access
    def _refresh(self) -> None:
        """Torch copies of the robot's state after a physics call."""
        to = self._to_torch
        self.tcp_pos_np = self.site_xpos[:, self.tcp_site_id]
        self.arm_qpos = self.qpos[:, self.arm_qpos_adr]
        self.tcp_pos = to(self.tcp_pos_np)
        self.tcp_quat = to(self.xquat[:, self.hand_body_id])
        self.gripper_width = to(self.qpos[:, self.finger_qpos_adr].sum(axis=1))

    def _to_torch(self, array: np.ndarray) -> torch.Tensor:
        return torch.tensor(array, dtype=torch.float32, device=self.device)

    def body_pos(self, body: int) -> torch.Tensor:
        """World position (N, 3) of body id `body`."""
        return self._to_torch(self.xpos[:, body])

    def body_quat(self, body: int) -> torch.Tensor:
        """World orientation (N, 4) of body id `body`."""
        return self._to_torch(self.xquat[:, body])

    def uniform(self, env_ids: torch.Tensor, *shape: int, low=0.0, high=1.0) -> torch.Tensor:
        """Per-env seeded uniform samples, float32 (len(env_ids), *shape)."""
        ids = env_ids.tolist()
        draws = np.stack([self._rngs[i].uniform(low, high, size=shape) for i in ids]) if ids else np.zeros((0, *shape))
        return torch.as_tensor(draws, dtype=torch.float32, device=self.device)

    def set_free_pose(self, joint: str, env_ids: torch.Tensor, pos: torch.Tensor, quat: torch.Tensor | None = None) -> None:
        """Place a free joint's body at (n, 3) positions (and (n, 4) quaternions), at rest."""
        adr = self.model.joint(joint).qposadr[0]
        dof = self.model.joint(joint).dofadr[0]
        ids = env_ids.cpu().numpy()
        self.qpos[ids, adr : adr + 3] = pos.cpu().double().numpy()
        if quat is not None:
            self.qpos[ids, adr + 3 : adr + 7] = quat.cpu().double().numpy()
        self.qvel[ids, dof : dof + 6] = 0.0

    # ------------------------------------------------------------------ the contract
    def reset(self, seed: int | None = None, env_ids: torch.Tensor | None = None) -> Obs:
        ids = self._ids(env_ids)
        if seed is not None:
            for i in ids.tolist():
                self._rngs[i] = np.random.default_rng([seed, self.cfg.first_env_index + i])
        self._reset_envs(ids)
        return self._observe()

    def _reset_envs(self, env_ids: torch.Tensor) -> None:
        if len(env_ids) == 0:
            return
        ids = env_ids.cpu().numpy()
        self.batch.reset(ids, stage=mujoco.mjtStage.mjSTAGE_NONE)
        rest = np.tile(REST_QPOS, (len(ids), 1))
        rest[:, :7] += self.uniform(env_ids, 7, low=-_REST_NOISE, high=_REST_NOISE).double().numpy()
        self.qpos[ids, :9] = rest
        self.ctrl[ids, :9] = rest
        self.elapsed_steps[env_ids] = 0
        self.instruction_index[env_ids] = (self.uniform(env_ids, 1)[:, 0] * len(self.instructions)).long().to(self.device)
        if self.cfg.randomization.enabled:
            self._randomize(env_ids)
        self.task.reset(env_ids)
        self._forward(ids)

    def _forward(self, ids: np.ndarray) -> None:
        self.batch.forward(ids, stage=mujoco.mjtStage.mjSTAGE_POS)
        self._warnings[ids] = self.batch.warning[ids][:, _UNSTABLE_WARNINGS, 1]
        self._refresh()

    def step(self, action: torch.Tensor) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        self._check_action(action)
        self.controller.apply(action)
        unstable = np.zeros(self.num_envs, dtype=bool)
        try:
            self.batch.step(nstep=self.substeps, stage=mujoco.mjtStage.mjSTAGE_POS)
        except mujoco.batch.SimulationError as error:
            unstable[error.ids] = True
        warnings = self.batch.warning[:, _UNSTABLE_WARNINGS, 1]
        unstable |= (warnings > self._warnings).any(axis=1) | ~np.isfinite(self.qpos).all(axis=1)
        self._warnings = warnings.copy()
        self._refresh()
        self.elapsed_steps += 1

        unstable_t = torch.as_tensor(unstable, device=self.device)
        success = self.task.success() & ~unstable_t
        if self.cfg.reward_mode == "sparse":
            reward = success.float()
        else:
            reward = self.task.dense_reward() + _SUCCESS_BONUS * success.float()
        reward = torch.where(unstable_t, torch.zeros_like(reward), reward)
        terminated = unstable_t | (success if self.cfg.terminate_on_success else torch.zeros_like(success))
        truncated = (self.elapsed_steps >= self.max_episode_steps) & ~terminated
        obs = self._observe()
        info: dict = {"success": success, "unstable": unstable_t}
        if self.cfg.report_stages and (stages := self.task.stages()):
            info["stages"] = {name: reached & ~unstable_t for name, reached in stages.items()}
        done = terminated | truncated
        if done.any():
            done_ids = done.nonzero()[:, 0]
            info["final_observation"] = obs
            info["done"] = done
            self._reset_envs(done_ids)
            obs = self._merge_obs(obs, self._observe(done_ids), done_ids)
        return obs, reward, terminated, truncated, info

    def get_state(self) -> dict[str, torch.Tensor]:
        state = {
            "physics": torch.as_tensor(self.batch.state.copy(), device=self.device),
            "elapsed_steps": self.elapsed_steps.clone(),
            "instruction_index": self.instruction_index.clone(),
        }
        for name in self._nominal:
            expanded = self.batch.expanded(name)
            if expanded is not None:
                state[f"model.{name}"] = torch.as_tensor(expanded.copy(), device=self.device)
        for key, value in self.task.state().items():
            state[f"task.{key}"] = value.clone()
        return state

    def set_state(self, state: dict[str, torch.Tensor], env_ids: torch.Tensor | None = None) -> Obs:
        ids_t = self._ids(env_ids)
        ids = ids_t.cpu().numpy()
        rows = len(ids)
        if state["physics"].shape[0] != rows:
            raise ValueError(f"State has {state['physics'].shape[0]} rows for {rows} env ids.")
        self.batch.state[ids] = state["physics"].cpu().numpy()
        self.elapsed_steps[ids_t] = state["elapsed_steps"].to(self.device)
        self.instruction_index[ids_t] = state["instruction_index"].to(self.device)
        model_fields = [key for key in state if key.startswith("model.")]
        for key in model_fields:
            self.batch.expand(key[len("model."):])[ids] = state[key].cpu().numpy()
        if "model.body_mass" in model_fields:
            self.batch.set_const(ids)
        self.task.set_state({k[len("task."):]: v for k, v in state.items() if k.startswith("task.")}, ids_t)
        self._forward(ids)
        return self._observe()

    def get_rng_state(self) -> list[dict]:
        """The per-env generators' states (for exact resumption of a training run)."""
        return [dict(rng.bit_generator.state) for rng in self._rngs]

    def set_rng_state(self, states: list[dict]) -> None:
        if len(states) != self.num_envs:
            raise ValueError(f"Got {len(states)} generator states for {self.num_envs} envs.")
        for rng, state in zip(self._rngs, states, strict=True):
            rng.bit_generator.state = state

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None

    # ------------------------------------------------------------------ helpers
    def _ids(self, env_ids: torch.Tensor | None) -> torch.Tensor:
        if env_ids is None:
            return torch.arange(self.num_envs, device=self.device)
        env_ids = torch.as_tensor(env_ids, device=self.device).long().reshape(-1)
        if len(env_ids) and (env_ids.min() < 0 or env_ids.max() >= self.num_envs):
            raise ValueError(f"env_ids must lie in [0, {self.num_envs}); got {env_ids.tolist()}.")
        return env_ids

    def _check_action(self, action: torch.Tensor) -> None:
        expected = (self.num_envs, self.action_dim)
        if not isinstance(action, torch.Tensor):
            raise TypeError(f"Actions must be a torch.Tensor of shape {expected}; got {type(action).__name__}.")
        if tuple(action.shape) != expected:
            raise ValueError(
                f"Actions must have shape (num_envs, action_dim) = {expected} for controller "
                f"{self.cfg.controller!r}; got {tuple(action.shape)}."
            )
        if not action.is_floating_point():
            raise TypeError(f"Actions must be floating point (float32); got {action.dtype}.")
        finite = torch.isfinite(action).all(dim=1)
        if not finite.all():
            bad = (~finite).nonzero()[:, 0].tolist()
            raise ValueError(f"Actions contain NaN or inf in envs {bad[:10]}; nothing was applied.")

    def _proprio(self) -> torch.Tensor:
        """``observation.state`` (N, 25): arm and finger joint positions and velocities, TCP pose."""
        q, v = self.qpos, self.qvel
        proprio = np.concatenate(
            (
                q[:, self.arm_qpos_adr],
                q[:, self.finger_qpos_adr],
                v[:, self.arm_dof_adr],
                v[:, self.finger_dof_adr],
                self.tcp_pos_np,
                self.xquat[:, self.hand_body_id],
            ),
            axis=1,
        )
        return self._to_torch(proprio)

    def _observe(self, env_ids: torch.Tensor | None = None) -> Obs:
        """Observations of all envs, or of `env_ids` only (rows in that order)."""
        obs: Obs = {
            "observation.state": self._proprio(),
            "observation.environment_state": self.task.environment_state(),
        }
        index = self.instruction_index
        if env_ids is not None:
            obs = {k: v[env_ids] for k, v in obs.items()}
            index = index[env_ids]
        obs["task"] = [self.instructions[i] for i in index.tolist()]
        if self.renderer is not None:
            ids = None if env_ids is None else env_ids.cpu().numpy()
            for name, image in self.renderer.render(self.batch, ids).items():
                if name.endswith("_depth"):
                    obs[f"observation.depth.{name[: -len('_depth')]}"] = torch.as_tensor(image, device=self.device)
                else:
                    obs[f"observation.images.{name}"] = torch.as_tensor(image, device=self.device)
        return obs

    @staticmethod
    def _merge_obs(obs: Obs, rows: Obs, env_ids: torch.Tensor) -> Obs:
        merged: Obs = {}
        for key, value in obs.items():
            if key == "task":
                value = list(value)
                for j, i in enumerate(env_ids.tolist()):
                    value[i] = rows["task"][j]
            else:
                value = value.clone()
                value[env_ids] = rows[key]
            merged[key] = value
        return merged

    def _randomize(self, env_ids: torch.Tensor) -> None:
        """Domain randomization of colours, lights, cameras, friction and mass for `env_ids`."""
        dr = self.cfg.randomization
        m, b, nominal = self.model, self.batch, self._nominal
        ids = env_ids.cpu().numpy()
        n = len(ids)

        def draw(*shape, low=0.0, high=1.0) -> np.ndarray:
            return self.uniform(env_ids, *shape, low=low, high=high).double().numpy()

        if dr.colors:
            # Objects keep their hue (instructions name it: "the red cube"): brightness and a
            # small tint change. The table gets any colour.
            objects = [m.geom(g).id for g in self.task.randomized_geoms]
            table = [m.geom("table").id]
            rgba = b.expand("geom_rgba")
            base = nominal["geom_rgba"][objects][None, :, :3]
            tinted = base * draw(len(objects), 1, low=0.65, high=1.25) + draw(len(objects), 3, low=-0.06, high=0.06)
            rgba[np.ix_(ids, objects, np.arange(3))] = np.clip(tinted, 0.0, 1.0)
            rgba[np.ix_(ids, table, np.arange(3))] = draw(1, 3, low=0.15, high=0.9)
        if dr.lighting:
            scale = draw(m.nlight, 1, low=dr.light_range[0], high=dr.light_range[1])
            b.expand("light_diffuse")[ids] = nominal["light_diffuse"][None] * scale
        if dr.camera_pose:
            cams = [m.camera(c).id for c in _RANDOMIZED_CAMERAS]
            cam_pos, cam_quat = b.expand("cam_pos"), b.expand("cam_quat")
            cam_pos[np.ix_(ids, cams)] = nominal["cam_pos"][cams] + draw(len(cams), 3, low=-1, high=1) * dr.camera_pos_jitter
            rotvec = torch.as_tensor(draw(len(cams), 3, low=-1, high=1) * dr.camera_rot_jitter)
            from sims.rotations import axis_angle_to_quat, quat_mul

            jitter = axis_angle_to_quat(rotvec)
            cam_quat[np.ix_(ids, cams)] = quat_mul(jitter, torch.as_tensor(nominal["cam_quat"][cams]).expand(n, -1, -1)).numpy()
        if dr.physics:
            geoms = [m.geom(g).id for g in self.task.randomized_geoms]
            friction = b.expand("geom_friction")
            friction[np.ix_(ids, geoms)] = nominal["geom_friction"][geoms]
            friction[np.ix_(ids, geoms, np.array([0]))] = nominal["geom_friction"][geoms][:, :1] * draw(len(geoms), 1, low=dr.friction_range[0], high=dr.friction_range[1])
            bodies = [m.body(name).id for name in self.task.randomized_bodies]
            if bodies:
                scale = draw(len(bodies), low=dr.mass_range[0], high=dr.mass_range[1])
                b.expand("body_mass")[np.ix_(ids, bodies)] = nominal["body_mass"][bodies] * scale
                b.expand("body_inertia")[np.ix_(ids, bodies)] = nominal["body_inertia"][bodies] * scale[..., None]
                b.set_const(ids)  # derived constants (body_subtreemass) follow the new masses
