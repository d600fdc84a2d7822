"""What a task is: its objects, its initial-state distribution, its terms, and its expert.

A task is a short file (see `sims/tasks/pick_cube.py`): a `Task` subclass registered with
`@register_task`, which adds its objects to the scene, samples initial states for a subset
of envs, and defines success, a dense reward and privileged observations as functions of
the batched state; plus a `ScriptedExpert` that solves it.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar

import mujoco
import torch

from sims.mujoco.controllers import EEDeltaController
from sims.rotations import quat_conj, quat_mul, quat_to_axis_angle, wrap_angle, yaw_to_quat

if TYPE_CHECKING:
    from sims.mujoco.env import MujocoBatchedEnv

TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task available to `sims.make(task=cls.name)`."""
    if cls.name in TASKS:
        raise ValueError(f"Task {cls.name!r} is registered twice.")
    TASKS[cls.name] = cls
    return cls


class Task(abc.ABC):
    """One manipulation task on the tabletop. Subclasses set the class attributes."""

    name: ClassVar[str]
    description: ClassVar[str]
    instructions: ClassVar[tuple[str, ...]]
    max_episode_steps: ClassVar[int] = 100
    randomized_geoms: ClassVar[tuple[str, ...]] = ()  # object geoms whose colour DR changes
    randomized_bodies: ClassVar[tuple[str, ...]] = ()  # object bodies whose mass DR changes
    env: MujocoBatchedEnv  # the env the task runs in, from `setup` on

    @abc.abstractmethod
    def build(self, spec: mujoco.MjSpec) -> None:
        """Add the task's bodies, geoms and goal markers to the scene."""

    def setup(self, env: MujocoBatchedEnv) -> None:
        """Called once after the model is compiled: look up ids, allocate (N, ...) buffers."""
        self.env = env

    @abc.abstractmethod
    def reset(self, env_ids: torch.Tensor) -> None:
        """Sample initial object poses and goals for `env_ids` (the robot is already reset)."""

    @abc.abstractmethod
    def environment_state(self) -> torch.Tensor:
        """Privileged state for state-based policies, float32 (N, D_env)."""

    @abc.abstractmethod
    def success(self) -> torch.Tensor:
        """bool (N,)."""

    @abc.abstractmethod
    def dense_reward(self) -> torch.Tensor:
        """float32 (N,), shaped so that following it leads to success; the bonus for success
        is added by the env."""

    def stages(self) -> dict[str, torch.Tensor]:
        """The task's milestones on the way to success, in order, each (N,) bool: whether the
        env is at that milestone now (for instance "lifted", "on_top"). An env with
        `report_stages` (the evaluator's) returns them in info; evaluation reports the fraction
        of episodes that reach each at some step (`stage/<name>`), which shows where a policy
        fails. Single-stage tasks have none."""
        return {}

    def state(self) -> dict[str, torch.Tensor]:
        """Task buffers that are not physics state (goals), each (N, ...), for get/set_state."""
        return {}

    def set_state(self, state: dict[str, torch.Tensor], env_ids: torch.Tensor) -> None:
        for key, value in self.state().items():
            value[env_ids] = state[key].to(value)

    @abc.abstractmethod
    def expert(self) -> ScriptedExpert:
        """A scripted expert for this task on this env (end-effector delta control)."""


DOWN = torch.tensor([0.0, 1.0, 0.0, 0.0])  # TCP z axis pointing at the table, fingers along y


class ScriptedExpert(abc.ABC):
    """A batched state machine over privileged state that outputs `ee_delta` actions.

    `act()` reads the env directly (privileged), keeps a phase per env and restarts an env's
    phase when its episode restarts (elapsed step 0)."""

    def __init__(self, env: MujocoBatchedEnv):
        if env.cfg.controller != "ee_delta":
            raise ValueError(
                f"Scripted experts emit 'ee_delta' actions; this env uses {env.cfg.controller!r}. "
                "Make the env with controller='ee_delta'."
            )
        self.env = env
        self.task = env.task  # subclasses narrow its type to their own task class
        self.phase = torch.zeros(env.num_envs, dtype=torch.long, device=env.device)
        self.phase_steps = torch.zeros(env.num_envs, dtype=torch.long, device=env.device)

    @abc.abstractmethod
    def plan(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per env: target TCP position (N, 3), target yaw (N,), gripper command (N,) in [-1, 1].
        May advance `self.phase`."""

    def act(self, obs: dict | None = None) -> torch.Tensor:
        """(N, 7) actions towards the current phase's target."""
        restarted = self.env.elapsed_steps == 0
        self.phase[restarted] = 0
        self.phase_steps[restarted] = 0
        prev_phase = self.phase.clone()
        target_pos, target_yaw, gripper = self.plan()
        self.phase_steps = torch.where(self.phase == prev_phase, self.phase_steps + 1, 0)
        return self.move_action(target_pos, target_yaw, gripper)

    def advance(self, mask: torch.Tensor, to_phase: int) -> None:
        """Move the envs in `mask` to `to_phase`."""
        self.phase = torch.where(mask, torch.full_like(self.phase, to_phase), self.phase)

    def move_action(self, target_pos: torch.Tensor, target_yaw: torch.Tensor, gripper: torch.Tensor) -> torch.Tensor:
        env = self.env
        controller = env.controller
        assert isinstance(controller, EEDeltaController)  # __init__ checked cfg.controller
        pos_err = (target_pos - env.tcp_pos) / controller.pos_scale
        target_quat = quat_mul(yaw_to_quat(target_yaw), DOWN.to(env.tcp_quat).expand_as(env.tcp_quat))
        rot_err = quat_to_axis_angle(quat_mul(target_quat, quat_conj(env.tcp_quat))) / controller.rot_scale
        action = torch.cat((pos_err, rot_err, gripper[:, None]), dim=1)
        return action.clamp(-1.0, 1.0).float()

    @staticmethod
    def grasp_yaw(object_yaw: torch.Tensor, tcp_yaw: torch.Tensor, symmetry: float = torch.pi / 2) -> torch.Tensor:
        """The grasp yaw nearest the current TCP yaw among an object's symmetric yaws."""
        delta = wrap_angle((object_yaw - tcp_yaw) * (2 * torch.pi / symmetry)) * (symmetry / (2 * torch.pi))
        return tcp_yaw + delta


class CubeGraspExpert(ScriptedExpert):
    """An expert whose first three phases pick up a cube: ABOVE (hover 8 cm over it, yaw
    aligned, until settled) -> DESCEND (gently, no overshoot) -> CLOSE (on the spot where the
    cube was). Subclasses number their own phases from LIFT = 3 on and call `plan_grasp`."""

    ABOVE, DESCEND, CLOSE, LIFT = range(4)
    GRASP_HOVER = 0.08  # metres above the cube in ABOVE
    DESCENT_STEP = 0.015  # most metres per step on the way down to the cube
    GRASP_EARLY = 0.008  # close this far above the cube centre: the hand still sinks a bit
    CLOSE_STEPS = 6  # control steps to close the fingers

    def __init__(self, env: MujocoBatchedEnv):
        super().__init__(env)
        self.prev_tcp = env.tcp_pos.clone()
        self.grasp_xy = torch.zeros(env.num_envs, 2, device=env.device)

    def tcp_speed(self) -> torch.Tensor:
        """(N,) metres the TCP moved since the last call."""
        speed = (self.env.tcp_pos - self.prev_tcp).norm(dim=1)
        self.prev_tcp = self.env.tcp_pos.clone()
        return speed

    def plan_grasp(
        self, cube: torch.Tensor, half: float, speed: torch.Tensor, target: torch.Tensor, gripper: torch.Tensor
    ) -> None:
        """Fill `target` (N, 3) and `gripper` (N,) for the envs in the grasp phases and advance
        them; `cube` (N, 3) is the cube's centre, `half` its half size."""
        tcp, phase = self.env.tcp_pos, self.phase
        err = cube - tcp
        xy_err = err[:, :2].norm(dim=1)

        above = phase == self.ABOVE
        target[above] = cube[above]
        target[above, 2] = cube[above, 2] + self.GRASP_HOVER
        settled = (xy_err < 0.006) & ((err[:, 2] + self.GRASP_HOVER).abs() < 0.02) & (speed < 0.005)
        self.advance(above & settled, self.DESCEND)

        descend = phase == self.DESCEND
        target[descend, :2] = tcp[descend, :2] + 0.5 * err[descend, :2]  # gently: no overshoot
        drop = (0.5 * (tcp[descend, 2] - cube[descend, 2])).clamp(max=self.DESCENT_STEP)
        target[descend, 2] = tcp[descend, 2] - drop
        reached = (xy_err < 0.004) & (err[:, 2] > -self.GRASP_EARLY) & (speed < 0.006)
        to_close = descend & (reached | (self.phase_steps > 25))
        self.grasp_xy = torch.where(to_close[:, None], cube[:, :2], self.grasp_xy)
        self.advance(to_close, self.CLOSE)

        close = phase == self.CLOSE
        target[close, :2] = self.grasp_xy[close]  # fixed: a pushed cube must not drag the hand
        target[close, 2] = half
        gripper[close] = -1.0
        self.advance(close & (self.phase_steps >= self.CLOSE_STEPS), self.LIFT)
