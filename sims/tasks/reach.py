"""Reach: move the gripper's TCP to a goal point in the air above the table.

For image-based policies the goal is drawn so that one 64x64 view shows where it is in 3D: an
opaque green sphere (visual only, larger than the success radius) and a dark green disc on the
table straight below it, like a shadow, seen by the task's "workspace" camera, which frames the
goal region from the front right and above (the scene's "front" camera shows a sphere ~2 px wide
and no cue to its depth)."""

from __future__ import annotations

import mujoco
import torch

from sims.mujoco.scene import add_goal_marker
from sims.tasks.base import ScriptedExpert, Task, register_task

GOAL_LOW = (-0.15, -0.2, 0.05)
GOAL_HIGH = (0.15, 0.2, 0.35)
SUCCESS_DISTANCE = 0.025
MARKER_RADIUS = 0.035  # visual only; success is SUCCESS_DISTANCE
GROUND_MARKER_HEIGHT = 0.0005  # the disc's centre: half its 1 mm thickness above the table
# Looks from (0.55, 0.45, 0.65) at (-0.02, 0, 0.17): the goal region fills a 64x64 frame.
WORKSPACE_CAMERA = {
    "pos": [0.55, 0.45, 0.65],
    "xyaxes": [-0.62, 0.785, 0.0, -0.433, -0.342, 0.834],
    "fovy": 50.0,
}


@register_task
class Reach(Task):
    name = "Reach"
    description = "Move the TCP within 2.5 cm of a random goal point."
    instructions = (
        "reach the green target",
        "move the gripper to the green ball",
        "touch the floating green sphere",
        "go to the target point",
    )
    max_episode_steps = 50

    def build(self, spec: mujoco.MjSpec) -> None:
        add_goal_marker(spec, "goal", MARKER_RADIUS, (0.1, 0.85, 0.2, 1.0))
        add_goal_marker(spec, "goal_ground", MARKER_RADIUS, (0.05, 0.3, 0.08, 1.0), flat=True)
        spec.worldbody.add_camera(name="workspace", **WORKSPACE_CAMERA)

    def setup(self, env) -> None:
        super().setup(env)
        self.goal_mocap = env.model.body("goal").mocapid[0]
        self.ground_mocap = env.model.body("goal_ground").mocapid[0]
        self.goal = torch.zeros(env.num_envs, 3, device=env.device)

    def reset(self, env_ids: torch.Tensor) -> None:
        low, high = torch.tensor(GOAL_LOW), torch.tensor(GOAL_HIGH)
        self.goal[env_ids] = (low + (high - low) * self.env.uniform(env_ids, 3).cpu()).to(self.goal)
        ids, goal = env_ids.cpu().numpy(), self.goal[env_ids].cpu().double().numpy()
        self.env.mocap_pos[ids, self.goal_mocap] = goal
        self.env.mocap_pos[ids, self.ground_mocap] = goal * (1, 1, 0) + (0, 0, GROUND_MARKER_HEIGHT)

    def set_state(self, state, env_ids) -> None:
        super().set_state(state, env_ids)

    def state(self) -> dict[str, torch.Tensor]:
        return {"goal": self.goal}

    def environment_state(self) -> torch.Tensor:
        return torch.cat((self.goal, self.goal - self.env.tcp_pos), dim=1)

    def distance(self) -> torch.Tensor:
        return (self.goal - self.env.tcp_pos).norm(dim=1)

    def success(self) -> torch.Tensor:
        return self.distance() < SUCCESS_DISTANCE

    def dense_reward(self) -> torch.Tensor:
        return 1.0 - torch.tanh(5.0 * self.distance())

    def expert(self) -> ScriptedExpert:
        return ReachExpert(self.env)


class ReachExpert(ScriptedExpert):
    task: Reach

    def plan(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        env = self.env
        yaw = torch.zeros(env.num_envs, device=env.device)
        return self.task.goal, yaw, torch.ones(env.num_envs, device=env.device)
