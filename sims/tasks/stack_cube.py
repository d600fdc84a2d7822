"""StackCube: pick up the red cube and put it on top of the green cube."""

from __future__ import annotations

import mujoco
import torch

from sims.mujoco.scene import add_box
from sims.rotations import quat_to_yaw, wrap_angle
from sims.tasks.base import CubeGraspExpert, ScriptedExpert, Task, register_task
from sims.tasks.pick_cube import cube_grasped, cube_held_up, random_yaw_quat

HALF = 0.02  # half size of both cubes, metres
SPAWN = 0.12  # cube xy uniform in [-SPAWN, SPAWN]
MIN_DISTANCE = 0.08  # the cubes' centres at least this far apart
SPAWN_TRIES = 32  # rejection-sampling candidates for cube B per env
ON_TOP_XY = 0.015  # success: A's centre this close to B's top centre in xy ...
ON_TOP_Z = 0.01  # ... and this close to resting height (B's top + HALF)
RELEASED_DISTANCE = 0.03  # the gripper holds no cube whose centre is this far from the TCP ...
OPEN_WIDTH = 2 * HALF + 0.01  # ... or when its fingers are this far apart
STATIC_LINEAR = 0.02  # m/s: a cube moving slower than this ...
STATIC_ANGULAR = 0.5  # rad/s: ... and turning slower than this is at rest


@register_task
class StackCube(Task):
    name = "StackCube"
    description = "Pick up the red cube and place it on top of the green cube."
    instructions = (
        "stack the red cube on the green cube",
        "put the red block on top of the green block",
        "place the red cube onto the green one",
        "pick up the red cube and stack it on the green cube",
        "build a tower: red block on the green block",
    )
    max_episode_steps = 120
    randomized_geoms = ("cube_a", "cube_b")
    randomized_bodies = ("cube_a", "cube_b")

    def build(self, spec: mujoco.MjSpec) -> None:
        add_box(spec, "cube_a", HALF, (0.85, 0.15, 0.1, 1.0), mass=0.05, pos=(0.0, 0.0, HALF))
        add_box(spec, "cube_b", HALF, (0.15, 0.7, 0.2, 1.0), mass=0.05, pos=(0.1, 0.0, HALF))

    def setup(self, env) -> None:
        super().setup(env)
        self.cube_a = env.model.body("cube_a").id
        self.cube_b = env.model.body("cube_b").id
        self.dof_a = env.model.joint("cube_a_joint").dofadr[0]
        self.dof_b = env.model.joint("cube_b_joint").dofadr[0]

    def reset(self, env_ids: torch.Tensor) -> None:
        env = self.env
        n = len(env_ids)
        a_xy = (env.uniform(env_ids, 2) * 2 - 1) * SPAWN
        # B: the first of SPAWN_TRIES uniform candidates far enough from A, or else MIN_DISTANCE
        # from A along x, towards the middle (inside the square since |A_x| <= SPAWN).
        candidates = (env.uniform(env_ids, SPAWN_TRIES, 2) * 2 - 1) * SPAWN
        far = (candidates - a_xy[:, None]).norm(dim=2) >= MIN_DISTANCE
        b_xy = candidates[torch.arange(n, device=env.device), far.float().argmax(dim=1)]
        fallback = a_xy.clone()
        fallback[:, 0] -= torch.where(a_xy[:, 0] >= 0, MIN_DISTANCE, -MIN_DISTANCE)
        b_xy = torch.where(far.any(dim=1, keepdim=True), b_xy, fallback)
        z = torch.full_like(a_xy[:, :1], HALF)
        for joint, xy in (("cube_a_joint", a_xy), ("cube_b_joint", b_xy)):
            env.set_free_pose(joint, env_ids, torch.cat((xy, z), dim=1), random_yaw_quat(env, env_ids))

    def pos_a(self) -> torch.Tensor:
        """Centre of cube A (red, to be moved), (N, 3)."""
        return self.env.body_pos(self.cube_a)

    def pos_b(self) -> torch.Tensor:
        """Centre of cube B (green, the base), (N, 3)."""
        return self.env.body_pos(self.cube_b)

    def on_top(self) -> torch.Tensor:
        """A rests on B's top face (by position); (N,) bool."""
        offset = self.pos_a() - self.pos_b()
        return (offset[:, :2].norm(dim=1) < ON_TOP_XY) & ((offset[:, 2] - 2 * HALF).abs() < ON_TOP_Z)

    def released(self) -> torch.Tensor:
        """The gripper does not hold A; (N,) bool."""
        far = (self.pos_a() - self.env.tcp_pos).norm(dim=1) >= RELEASED_DISTANCE
        return far | (self.env.gripper_width > OPEN_WIDTH)

    def static(self) -> torch.Tensor:
        """Both cubes at rest; (N,) bool."""
        env = self.env
        rest = torch.ones(env.num_envs, dtype=torch.bool, device=env.device)
        for dof in (self.dof_a, self.dof_b):
            qvel = torch.as_tensor(env.qvel[:, dof : dof + 6], dtype=torch.float32, device=env.device)
            rest &= qvel[:, :3].norm(dim=1) < STATIC_LINEAR
            rest &= qvel[:, 3:].norm(dim=1) < STATIC_ANGULAR
        return rest

    def environment_state(self) -> torch.Tensor:
        """A position and quaternion, B position and quaternion, A - TCP, B - A: (N, 20)."""
        env = self.env
        a, b = self.pos_a(), self.pos_b()
        quat_a, quat_b = env.body_quat(self.cube_a), env.body_quat(self.cube_b)
        return torch.cat((a, quat_a, b, quat_b, a - env.tcp_pos, b - a), dim=1)

    def success(self) -> torch.Tensor:
        return self.on_top() & self.released() & self.static()

    def stages(self) -> dict[str, torch.Tensor]:
        """lifted: A 1 cm off the table at the TCP; above_target: A at the TCP, within ON_TOP_XY
        of B's centre in xy, its bottom above B's top; on_top: A on B's top (held or not)."""
        a, b = self.pos_a(), self.pos_b()
        held = (a - self.env.tcp_pos).norm(dim=1) < 2 * HALF
        above = ((a - b)[:, :2].norm(dim=1) < ON_TOP_XY) & (a[:, 2] - HALF > b[:, 2] + HALF - 0.002)
        return {"lifted": cube_held_up(self.env, a), "above_target": held & above, "on_top": self.on_top()}

    def dense_reward(self) -> torch.Tensor:
        """Reach A, grasp it, carry it onto B, let go; each stage a quarter, in [0, 1]."""
        env = self.env
        a = self.pos_a()
        on_top = self.on_top().float()
        reach = 1.0 - torch.tanh(5.0 * (a - env.tcp_pos).norm(dim=1))
        grasped = cube_grasped(env, a).float()
        goal = self.pos_b() + a.new_tensor([0.0, 0.0, 2 * HALF])
        place = grasped * (1.0 - torch.tanh(5.0 * (a - goal).norm(dim=1)))
        shaped = sum(torch.maximum(term, on_top) for term in (reach, grasped, place))
        return shaped / 4.0 + on_top * self.released().float() / 4.0

    def expert(self) -> ScriptedExpert:
        return StackCubeExpert(self.env)


class StackCubeExpert(CubeGraspExpert):
    """Above A -> down -> close -> lift -> carry A above B -> lower A onto B -> open -> retreat.
    A cube lost on the way sends the env back to the start.

    The gripper opens only to 6 cm and closes along whichever of A's two face axes is more
    nearly perpendicular to the direction of B, so the fingers never land on B. The hand moves gently (ramped, at most
    1.5 cm per step) while it holds A: jerky motion lets the cube slide in the grip."""
    task: StackCube

    ABOVE, DESCEND, CLOSE, LIFT, CARRY, LOWER, OPEN, RETREAT = range(8)
    OPEN_COMMAND = 0.5  # gripper command: 6 cm between the fingers
    CARRY_HEIGHT = 0.1  # A's centre height while carrying: its bottom 4 cm above B's top
    RELEASE_GAP = 0.004  # release A this far above B's top
    LIFT_STEP = 0.015  # most metres per step on the way up
    CARRY_RAMP = 0.003  # speed-up per step while carrying
    CARRY_STEP = 0.015  # most metres per step while carrying
    LOWER_STEP = 0.01  # most metres per step while lowering A onto B
    HOVER = 0.02  # centre A this far above its release height
    CENTRED = 0.006  # A's centre this close to B's in xy before it goes down onto B
    RETREAT_HEIGHT = 0.15  # TCP height after letting go

    def grasp_yaw_away_from(
        self, cube_yaw: torch.Tensor, tcp_yaw: torch.Tensor, away: torch.Tensor
    ) -> torch.Tensor:
        """(N,) grasp yaws for a cube of yaw (N,): the nearest to the TCP's yaw (N,) whose
        finger axis is at least 45 degrees off the (N, 2) unit direction `away`."""
        yaw = self.grasp_yaw(cube_yaw, tcp_yaw)
        fingers = torch.stack((-torch.sin(yaw), torch.cos(yaw)), dim=1)  # the hand's y axis
        toward = (fingers * away).sum(dim=1).abs() > 0.7072
        turn = torch.where(wrap_angle(tcp_yaw - yaw) >= 0, torch.pi / 2, -torch.pi / 2)
        return torch.where(toward, yaw + turn, yaw)

    def plan(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        env = self.env
        task = self.task
        n = env.num_envs
        a, b, tcp = task.pos_a(), task.pos_b(), env.tcp_pos
        speed = self.tcp_speed()
        tcp_yaw = quat_to_yaw(env.tcp_quat)
        a_to_b = (b - a)[:, :2]
        away = a_to_b / a_to_b.norm(dim=1, keepdim=True).clamp_min(1e-6)
        yaw = self.grasp_yaw_away_from(quat_to_yaw(env.body_quat(task.cube_a)), tcp_yaw, away)
        target = a.clone()
        gripper = torch.full((n,), self.OPEN_COMMAND, device=env.device)
        phase = self.phase
        lost = ((a - tcp).norm(dim=1) > 0.05) | (env.gripper_width < 2 * HALF - 0.01)
        self.plan_grasp(a, HALF, speed, target, gripper)

        lift = phase == self.LIFT
        target[lift, :2] = tcp[lift, :2]
        lift_to = tcp[:, 2] - a[:, 2] + self.CARRY_HEIGHT  # TCP height that puts A at CARRY_HEIGHT
        target[lift, 2] = torch.minimum(tcp[:, 2] + self.LIFT_STEP, lift_to)[lift]
        self.advance(lift & (a[:, 2] > self.CARRY_HEIGHT - 0.02), self.CARRY)

        # Carry and lower A itself, not the hand, onto B: it may have slid in the grip.
        carry = phase == self.CARRY
        distance = a_to_b[carry].norm(dim=1, keepdim=True)
        ramp = self.CARRY_RAMP * (self.phase_steps[carry, None] + 1)  # speed up, cruise, slow down
        step = torch.minimum(ramp, 0.5 * distance).clamp(max=self.CARRY_STEP)
        target[carry, :2] = tcp[carry, :2] + a_to_b[carry] * step / distance.clamp_min(1e-6)
        target[carry, 2] = lift_to[carry]
        self.advance(carry & (a_to_b.norm(dim=1) < self.CENTRED), self.LOWER)

        # Lower A to just above B's top, centring it on the way while it does not touch B
        # (sliding A across B's top drags B along); when off centre, hover and centre first.
        lower = phase == self.LOWER
        release_z = b[:, 2] + 2 * HALF + self.RELEASE_GAP
        centred = a_to_b.norm(dim=1) < self.CENTRED
        goal_z = torch.where(centred, release_z, release_z + self.HOVER)
        clear = (a[:, 2] - b[:, 2] - 2 * HALF > 0.5 * self.RELEASE_GAP)[:, None]
        centring = torch.where(clear, 0.5 * a_to_b, torch.zeros_like(a_to_b))
        target[lower, :2] = (tcp[:, :2] + centring)[lower]
        sink = (0.4 * (a[:, 2] - goal_z)).clamp(min=-self.LOWER_STEP, max=self.LOWER_STEP)
        target[lower, 2] = (tcp[:, 2] - sink)[lower]
        placed = ((a[:, 2] - release_z).abs() < 0.004) & centred & (speed < 0.004)
        self.advance(lower & placed, self.OPEN)

        carrying = lift | carry | lower
        gripper[carrying] = -1.0
        yaw[carrying] = tcp_yaw[carrying]
        self.advance(carrying & lost, self.ABOVE)  # dropped it: start again

        opening = phase == self.OPEN
        target[opening] = tcp[opening]
        self.advance(opening & (self.phase_steps >= 3), self.RETREAT)

        retreat = phase == self.RETREAT
        target[retreat, :2] = tcp[retreat, :2]
        target[retreat, 2] = self.RETREAT_HEIGHT
        # A fell off B: start again once the hand is clear.
        self.advance(retreat & ~task.on_top() & (tcp[:, 2] > self.RETREAT_HEIGHT - 0.03), self.ABOVE)
        yaw[opening | retreat] = tcp_yaw[opening | retreat]
        return target, yaw, gripper
