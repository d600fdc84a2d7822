"""Reach: move the gripper's TCP to a goal point in the air above the table."""

from __future__ import annotations

import mujoco
import torch

from sims.mujoco.scene import add_goal_marker
from sims.tasks.base import ScriptedExpert, Task, register_task

GOAL_LOW = (-0.15, -0.2, 0.05)
GOAL_HIGH = (0.15, 0.2, 0.35)
SUCCESS_DISTANCE = 0.025


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
        add_goal_marker(spec, "goal", 0.02, (0.1, 0.8, 0.2, 0.6))

    def setup(self, env) -> None:
        super().setup(env)
        self.goal_mocap = env.model.body("goal").mocapid[0]
        self.goal = torch.zeros(env.num_envs, 3, device=env.device)

    def reset(self, env_ids: torch.Tensor) -> None:
        low, high = torch.tensor(GOAL_LOW), torch.tensor(GOAL_HIGH)
        self.goal[env_ids] = (low + (high - low) * self.env.uniform(env_ids, 3).cpu()).to(self.goal)
        self.env.mocap_pos[env_ids.cpu().numpy(), self.goal_mocap] = self.goal[env_ids].cpu().double().numpy()

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
    def plan(self):
        env = self.env
        yaw = torch.zeros(env.num_envs, device=env.device)
        return env.task.goal, yaw, torch.ones(env.num_envs, device=env.device)
