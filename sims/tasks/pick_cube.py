"""PickCube: grasp a cube lying on the table and lift it 6 cm."""

from __future__ import annotations

import mujoco
import torch

from sims.mujoco.scene import add_box
from sims.rotations import quat_to_yaw, yaw_to_quat
from sims.tasks.base import ScriptedExpert, Task, register_task

HALF = 0.02  # cube half size, metres
SPAWN = 0.1  # cube xy uniform in [-SPAWN, SPAWN]
LIFT = 0.06  # success: cube bottom this high above the table


def cube_grasped(env, cube_pos: torch.Tensor, half: float = HALF) -> torch.Tensor:
    """Both fingers closed on a cube of half size `half` centred between them, (N,) bool."""
    width = env.gripper_width
    centred = (cube_pos - env.tcp_pos).norm(dim=1) < half
    return centred & (width > 2 * half - 0.01) & (width < 2 * half + 0.002)


def cube_held_up(env, cube_pos: torch.Tensor, half: float = HALF, height: float = 0.01) -> torch.Tensor:
    """The cube is off the table (its bottom `height` above it) and at the TCP: carried, however
    the fingers hold it (`cube_grasped` asks for a centred, square grip); (N,) bool."""
    near = (cube_pos - env.tcp_pos).norm(dim=1) < 2 * half
    return near & (cube_pos[:, 2] - half >= height)


def random_yaw_quat(env, env_ids: torch.Tensor) -> torch.Tensor:
    """Uniform yaw quaternions for a cube; (n, 4)."""
    return yaw_to_quat((env.uniform(env_ids, 1)[:, 0] * 2 - 1) * torch.pi)


@register_task
class PickCube(Task):
    name = "PickCube"
    description = "Grasp the red cube and lift it 6 cm above the table."
    instructions = (
        "pick up the red cube",
        "lift the red block",
        "grasp the red cube and raise it",
        "pick the red cube up off the table",
    )
    max_episode_steps = 60
    randomized_geoms = ("cube",)
    randomized_bodies = ("cube",)

    def build(self, spec: mujoco.MjSpec) -> None:
        add_box(spec, "cube", HALF, (0.85, 0.15, 0.1, 1.0), mass=0.05, pos=(0, 0, HALF))

    def setup(self, env) -> None:
        super().setup(env)
        self.cube = env.model.body("cube").id

    def reset(self, env_ids: torch.Tensor) -> None:
        env = self.env
        xy = (env.uniform(env_ids, 2) * 2 - 1) * SPAWN
        pos = torch.cat((xy, torch.full_like(xy[:, :1], HALF)), dim=1)
        env.set_free_pose("cube_joint", env_ids, pos, random_yaw_quat(env, env_ids))

    def cube_pos(self) -> torch.Tensor:
        return self.env.body_pos(self.cube)

    def environment_state(self) -> torch.Tensor:
        pos = self.cube_pos()
        return torch.cat((pos, self.env.body_quat(self.cube), pos - self.env.tcp_pos), dim=1)

    def success(self) -> torch.Tensor:
        return cube_held_up(self.env, self.cube_pos(), height=LIFT)

    def stages(self) -> dict[str, torch.Tensor]:
        """lifted: the cube 1 cm off the table at the TCP (success is 6 cm)."""
        return {"lifted": cube_held_up(self.env, self.cube_pos())}

    def dense_reward(self) -> torch.Tensor:
        pos = self.cube_pos()
        reach = 1.0 - torch.tanh(5.0 * (pos - self.env.tcp_pos).norm(dim=1))
        grasped = cube_grasped(self.env, pos).float()
        lift = grasped * (1.0 - torch.tanh(10.0 * (HALF + LIFT - pos[:, 2]).clamp_min(0.0)))
        return (reach + grasped + lift) / 3.0

    def expert(self) -> ScriptedExpert:
        return PickCubeExpert(self.env)


class PickCubeExpert(ScriptedExpert):
    """Above the cube, yaw aligned -> down -> close -> lift."""
    task: PickCube

    ABOVE, DESCEND, CLOSE, LIFT = range(4)

    def plan(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        env = self.env
        task = self.task
        cube = task.cube_pos()
        yaw = self.grasp_yaw(quat_to_yaw(env.body_quat(task.cube)), quat_to_yaw(env.tcp_quat))
        target = cube.clone()
        gripper = torch.ones(env.num_envs, device=env.device)
        phase = self.phase
        err = cube - env.tcp_pos

        above = phase == self.ABOVE
        target[above, 2] = cube[above, 2] + 0.08
        self.advance(above & (err[:, :2].norm(dim=1) < 0.01) & ((err[:, 2] + 0.08).abs() < 0.02), self.DESCEND)

        descend = phase == self.DESCEND
        self.advance(descend & ((err.norm(dim=1) < 0.008) | (self.phase_steps > 25)), self.CLOSE)

        close = phase == self.CLOSE
        gripper[close] = -1.0
        self.advance(close & (self.phase_steps >= 6), self.LIFT)

        lift = phase == self.LIFT
        gripper[lift] = -1.0
        target[lift, 2] = HALF + LIFT + 0.05
        return target, yaw, gripper
