"""Assemble a task's MuJoCo model: the tabletop scene, the Panda at its mount, the task's objects."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mujoco
import numpy as np

ASSETS = Path(__file__).resolve().parents[2] / "assets"
SCENE_XML = ASSETS / "scenes" / "tabletop.xml"
ROBOT_BASE_POS = [-0.615, 0.0, 0.0]  # the Panda base on the table, as in ManiSkill

ARM_JOINTS = tuple(f"joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("finger_joint1", "finger_joint2")
# ManiSkill's Panda rest pose: the hand points down above the table centre, fingers along y.
REST_QPOS = np.array([0.0, np.pi / 8, 0.0, -5 * np.pi / 8, 0.0, 3 * np.pi / 4, np.pi / 4, 0.04, 0.04])
GRIPPER_MAX_WIDTH = 0.08  # metres, both fingers open


def build_spec(add_task_objects: Callable[[mujoco.MjSpec], None] | None = None) -> mujoco.MjSpec:
    """The tabletop scene with the Panda; `add_task_objects(spec)` adds the rest."""
    spec = mujoco.MjSpec.from_file(str(SCENE_XML))
    spec.body("link0").pos = ROBOT_BASE_POS
    if add_task_objects is not None:
        add_task_objects(spec)
    return spec


def add_box(
    spec: mujoco.MjSpec,
    name: str,
    half_size: float | tuple[float, float, float],
    rgba: tuple[float, float, float, float],
    mass: float = 0.05,
    free: bool = True,
    pos: tuple[float, float, float] = (0.0, 0.0, 0.0),
    friction: float = 1.0,
) -> mujoco.MjsBody:
    """Add a (free) box body named `name` with a geom named `name` to the worldbody."""
    size = np.broadcast_to(np.asarray(half_size, dtype=float), (3,))
    body = spec.worldbody.add_body(name=name, pos=list(pos))
    if free:
        body.add_freejoint(name=f"{name}_joint")
    body.add_geom(
        name=name,
        type=mujoco.mjtGeom.mjGEOM_BOX,
        size=list(size),
        rgba=list(rgba),
        mass=mass,
        friction=[friction, 0.005, 0.0001],
        condim=4,
    )
    return body


def add_goal_marker(
    spec: mujoco.MjSpec, name: str, radius: float, rgba: tuple[float, float, float, float], flat: bool = False
) -> mujoco.MjsBody:
    """A mocap marker of a goal that does not collide: a sphere, or with `flat` a 1 mm disc
    lying on the table. Its pose is physics state (mocap_pos), so snapshots carry it."""
    body = spec.worldbody.add_body(name=name, mocap=True)
    body.add_geom(
        name=name,
        type=mujoco.mjtGeom.mjGEOM_CYLINDER if flat else mujoco.mjtGeom.mjGEOM_SPHERE,
        size=[radius, 0.0005, 0] if flat else [radius, 0, 0],
        rgba=list(rgba),
        contype=0,
        conaffinity=0,
        group=1,
    )
    return body
