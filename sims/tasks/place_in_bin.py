"""PlaceInBin: pick a cube up from the table and put it into an open-top bin."""

from __future__ import annotations

import mujoco
import torch

from sims.mujoco.scene import add_box
from sims.rotations import quat_conj, quat_rotate, quat_to_yaw, yaw_to_quat
from sims.tasks.base import CubeGraspExpert, ScriptedExpert, Task, register_task
from sims.tasks.pick_cube import cube_grasped, cube_held_up, random_yaw_quat

HALF = 0.02  # cube half size, metres
INNER = 0.06  # bin inner half width: a 12 x 12 cm footprint
WALL_HEIGHT = 0.05  # bin wall top above the table
WALL_HALF_THICKNESS = 0.003
FLOOR_HALF_THICKNESS = 0.002
BIN_SPAWN = 0.15  # bin centre xy uniform in [-BIN_SPAWN, BIN_SPAWN]
# Cube xy: uniform in this box (the arm reaches the table up to about 0.8 m from its base, so
# x stops at 0.15), at least MIN_DISTANCE from the bin centre.
CUBE_LOW, CUBE_HIGH = (-0.2, -0.2), (0.15, 0.2)
MIN_DISTANCE = 0.15
SPAWN_TRIES = 32  # rejection-sampling candidates per env
RELEASED_DISTANCE = 0.03  # the gripper holds no cube whose centre is this far from the TCP ...
OPEN_WIDTH = 0.06  # ... or when its fingers are this far apart
BIN_GEOMS = ("bin_floor", "bin_wall_px", "bin_wall_nx", "bin_wall_py", "bin_wall_ny")


def add_bin(spec: mujoco.MjSpec, name: str = "bin") -> mujoco.MjsBody:
    """An open-top bin: a mocap body (its pose is per-env state) carrying a floor and four
    walls that collide with free bodies. Geoms: `{name}_floor`, `{name}_wall_{px,nx,py,ny}`."""
    body = spec.worldbody.add_body(name=name, mocap=True)
    outer = INNER + 2 * WALL_HALF_THICKNESS
    half_wall = WALL_HEIGHT / 2
    offset = INNER + WALL_HALF_THICKNESS
    boxes = {f"{name}_floor": ((0.0, 0.0, FLOOR_HALF_THICKNESS), (outer, outer, FLOOR_HALF_THICKNESS))}
    for side, (sx, sy) in {"px": (1, 0), "nx": (-1, 0), "py": (0, 1), "ny": (0, -1)}.items():
        # x walls span the full outer width, y walls fit between them
        size = (WALL_HALF_THICKNESS, outer, half_wall) if sx else (INNER, WALL_HALF_THICKNESS, half_wall)
        boxes[f"{name}_wall_{side}"] = ((sx * offset, sy * offset, half_wall), size)
    for geom, (pos, size) in boxes.items():
        body.add_geom(
            name=geom,
            type=mujoco.mjtGeom.mjGEOM_BOX,
            pos=list(pos),
            size=list(size),
            rgba=[0.35, 0.45, 0.75, 1.0],
            contype=1,
            conaffinity=1,
            condim=4,
            friction=[0.8, 0.005, 0.0001],
        )
    return body


@register_task
class PlaceInBin(Task):
    name = "PlaceInBin"
    description = "Pick up the red cube and put it into the open-top bin."
    instructions = (
        "put the red cube in the bin",
        "place the red block into the box",
        "pick up the red cube and drop it into the bin",
        "move the red cube into the container",
    )
    max_episode_steps = 120
    randomized_geoms = ("cube", *BIN_GEOMS)
    randomized_bodies = ("cube",)

    def build(self, spec: mujoco.MjSpec) -> None:
        add_box(spec, "cube", HALF, (0.85, 0.15, 0.1, 1.0), mass=0.05, pos=(0.0, 0.0, HALF))
        add_bin(spec, "bin")

    def setup(self, env) -> None:
        super().setup(env)
        self.cube = env.model.body("cube").id
        self.bin = env.model.body("bin").id
        self.bin_mocap = env.model.body("bin").mocapid[0]

    def reset(self, env_ids: torch.Tensor) -> None:
        env = self.env
        n = len(env_ids)
        bin_xy = (env.uniform(env_ids, 2) * 2 - 1) * BIN_SPAWN
        bin_yaw = (env.uniform(env_ids, 1)[:, 0] * 2 - 1) * (torch.pi / 4)  # the bin is square
        # Cube: the first of SPAWN_TRIES uniform candidates far enough from the bin, or else the
        # workspace corner opposite the bin (always > MIN_DISTANCE away).
        low, high = torch.tensor(CUBE_LOW, device=env.device), torch.tensor(CUBE_HIGH, device=env.device)
        candidates = low + (high - low) * env.uniform(env_ids, SPAWN_TRIES, 2)
        far = (candidates - bin_xy[:, None]).norm(dim=2) >= MIN_DISTANCE
        first = far.float().argmax(dim=1)
        cube_xy = candidates[torch.arange(n, device=env.device), first]
        corner = torch.where(bin_xy >= 0, low, high)
        cube_xy = torch.where(far.any(dim=1, keepdim=True), cube_xy, corner)

        ids = env_ids.cpu().numpy()
        env.mocap_pos[ids, self.bin_mocap, :2] = bin_xy.cpu().double().numpy()
        env.mocap_pos[ids, self.bin_mocap, 2] = 0.0
        env.mocap_quat[ids, self.bin_mocap] = yaw_to_quat(bin_yaw).cpu().double().numpy()
        pos = torch.cat((cube_xy, torch.full_like(cube_xy[:, :1], HALF)), dim=1)
        env.set_free_pose("cube_joint", env_ids, pos, random_yaw_quat(env, env_ids))

    def cube_pos(self) -> torch.Tensor:
        """Cube centre, (N, 3)."""
        return self.env.body_pos(self.cube)

    def bin_pos(self) -> torch.Tensor:
        """Bin centre on the table, (N, 3)."""
        return self.env.body_pos(self.bin)

    def cube_in_bin_frame(self) -> torch.Tensor:
        """Cube centre in the bin's frame (origin: the bin's floor centre on the table), (N, 3)."""
        return quat_rotate(quat_conj(self.env.body_quat(self.bin)), self.cube_pos() - self.bin_pos())

    def inside(self) -> torch.Tensor:
        """The cube centre lies within the bin's inner footprint, below its wall top; (N,) bool."""
        local = self.cube_in_bin_frame()
        return (local[:, :2].abs() < INNER).all(dim=1) & (local[:, 2] < WALL_HEIGHT)

    def released(self) -> torch.Tensor:
        """The gripper does not hold the cube; (N,) bool."""
        far = (self.cube_pos() - self.env.tcp_pos).norm(dim=1) >= RELEASED_DISTANCE
        return far | (self.env.gripper_width > OPEN_WIDTH)

    def environment_state(self) -> torch.Tensor:
        """Cube position and quaternion, bin position and quaternion, cube - TCP, bin - cube: (N, 20)."""
        env = self.env
        cube, bin_pos = self.cube_pos(), self.bin_pos()
        cube_quat, bin_quat = env.body_quat(self.cube), env.body_quat(self.bin)
        return torch.cat((cube, cube_quat, bin_pos, bin_quat, cube - env.tcp_pos, bin_pos - cube), dim=1)

    def success(self) -> torch.Tensor:
        return self.inside() & self.released()

    def stages(self) -> dict[str, torch.Tensor]:
        """lifted: the cube 1 cm off the table at the TCP; inside: the cube inside the bin (held
        or not)."""
        return {"lifted": cube_held_up(self.env, self.cube_pos()), "inside": self.inside()}

    def dense_reward(self) -> torch.Tensor:
        """Reach the cube, grasp it, carry it above the bin, let it go inside; each stage a
        quarter, in [0, 1]."""
        env = self.env
        cube = self.cube_pos()
        inside = self.inside().float()
        reach = 1.0 - torch.tanh(5.0 * (cube - env.tcp_pos).norm(dim=1))
        grasped = cube_grasped(env, cube).float()
        above_bin = self.bin_pos() + cube.new_tensor([0.0, 0.0, WALL_HEIGHT + HALF + 0.02])
        carry = grasped * (1.0 - torch.tanh(5.0 * (cube - above_bin).norm(dim=1)))
        terms = (reach, grasped, carry, self.released().float() * inside)
        return sum(torch.maximum(t, inside) for t in terms[:3]) / 4.0 + terms[3] / 4.0

    def expert(self) -> ScriptedExpert:
        return PlaceInBinExpert(self.env)


class PlaceInBinExpert(CubeGraspExpert):
    """Above the cube -> down -> close -> lift over the walls -> above the bin centre ->
    lower a bit -> open -> retreat. A cube lost on the way sends the env back to the start.

    The hand moves gently (ramped, at most 1.5 cm per step) while it holds the cube: faster or
    jerkier motion lets the cube slide in the grip and fall out."""
    task: PlaceInBin

    ABOVE, DESCEND, CLOSE, LIFT, CARRY, LOWER, OPEN, RETREAT = range(8)
    CARRY_HEIGHT = 0.13  # TCP height while carrying: the cube bottom 6 cm above the walls
    RELEASE_HEIGHT = WALL_HEIGHT + HALF + 0.018  # cube centre height at release: 1.8 cm over the walls
    LIFT_STEP = 0.015  # most metres per step on the way up
    CARRY_RAMP = 0.003  # speed-up per step while carrying
    CARRY_STEP = 0.015  # most metres per step while carrying: faster shakes the cube loose

    def plan(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        env = self.env
        task = self.task
        n = env.num_envs
        cube, bin_pos, tcp = task.cube_pos(), task.bin_pos(), env.tcp_pos
        speed = self.tcp_speed()
        tcp_yaw = quat_to_yaw(env.tcp_quat)
        yaw = self.grasp_yaw(quat_to_yaw(env.body_quat(task.cube)), tcp_yaw)
        target = cube.clone()
        gripper = torch.ones(n, device=env.device)
        phase = self.phase
        lost = ((cube - tcp).norm(dim=1) > 0.05) | (env.gripper_width < 2 * HALF - 0.01)
        self.plan_grasp(cube, HALF, speed, target, gripper)

        lift = phase == self.LIFT
        target[lift, :2] = tcp[lift, :2]
        target[lift, 2] = (tcp[lift, 2] + self.LIFT_STEP).clamp(max=self.CARRY_HEIGHT)
        self.advance(lift & (tcp[:, 2] > self.CARRY_HEIGHT - 0.02), self.CARRY)

        # Carry and lower the cube, not the hand, to the bin centre: it may have slid in the grip.
        cube_to_bin = (bin_pos - cube)[:, :2]
        carry = phase == self.CARRY
        distance = cube_to_bin[carry].norm(dim=1, keepdim=True)
        # Speed up, cruise and slow down smoothly: jerks shake the cube loose.
        ramp = self.CARRY_RAMP * (self.phase_steps[carry, None] + 1)
        step = torch.minimum(ramp, 0.5 * distance).clamp(max=self.CARRY_STEP)
        target[carry, :2] = tcp[carry, :2] + cube_to_bin[carry] * step / distance.clamp_min(1e-6)
        target[carry, 2] = self.CARRY_HEIGHT
        self.advance(carry & (cube_to_bin.norm(dim=1) < 0.01), self.LOWER)

        lower = phase == self.LOWER
        target[lower, :2] = tcp[lower, :2] + cube_to_bin[lower]
        target[lower, 2] = self.RELEASE_HEIGHT + (tcp - cube)[lower, 2]
        self.advance(lower & ((cube[:, 2] - self.RELEASE_HEIGHT).abs() < 0.01), self.OPEN)

        carrying = lift | carry | lower
        gripper[carrying] = -1.0
        yaw[carrying] = tcp_yaw[carrying]
        self.advance(carrying & lost, self.ABOVE)  # dropped it: start again

        opening = phase == self.OPEN
        target[opening] = tcp[opening]
        self.advance(opening & (self.phase_steps >= 4), self.RETREAT)

        retreat = phase == self.RETREAT
        target[retreat, :2] = tcp[retreat, :2]
        target[retreat, 2] = self.CARRY_HEIGHT + 0.03
        yaw[opening | retreat] = tcp_yaw[opening | retreat]
        return target, yaw, gripper
