"""ManiSkill3 tasks available through `sims.make(task, backend="maniskill")`: static tables only,
importable without SAPIEN or a render device.

Only tasks whose assets ship inside the `mani-skill` wheel are listed (no YCB or PartNet
download). Instructions follow the wording of our own tasks where the task is the same.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ManiSkillTask:
    """One ManiSkill3 task: its gymnasium id and our language instructions for it."""

    env_id: str
    instructions: tuple[str, ...]


MANISKILL_TASKS: dict[str, ManiSkillTask] = {
    "PickCube": ManiSkillTask(
        "PickCube-v1",
        ("pick up the red cube and move it to the green goal", "lift the red cube to the target"),
    ),
    "PushCube": ManiSkillTask(
        "PushCube-v1",
        ("push the cube onto the red and white target", "slide the cube to the goal region"),
    ),
    "StackCube": ManiSkillTask(
        "StackCube-v1",
        ("stack the red cube on the green cube", "put the red block on top of the green block"),
    ),
    "PegInsertionSide": ManiSkillTask(
        "PegInsertionSide-v1",
        ("insert the peg into the hole in the box", "push the peg sideways into the hole"),
    ),
    "PullCube": ManiSkillTask(
        "PullCube-v1", ("pull the cube back onto the target", "drag the cube towards the robot")
    ),
    "PokeCube": ManiSkillTask(
        "PokeCube-v1", ("use the peg to push the cube to the goal", "poke the cube with the peg")
    ),
    "LiftPegUpright": ManiSkillTask(
        "LiftPegUpright-v1", ("stand the peg upright", "lift the lying peg to vertical")
    ),
    "PlaceSphere": ManiSkillTask(
        "PlaceSphere-v1", ("place the sphere in the bin", "put the ball into the bin")
    ),
    "RollBall": ManiSkillTask(
        "RollBall-v1",
        ("roll the ball to the goal region", "push the ball so it rolls to the target"),
    ),
    "PushT": ManiSkillTask(
        "PushT-v1", ("push the T-shaped block onto the T outline", "align the T with its goal")
    ),
}

# Our controller names -> ManiSkill control modes of the Panda (same meaning, same action dims:
# ee_delta is 7 = dx dy dz rx ry rz gripper, joint_delta 8; gripper -1 closed, +1 open).
CONTROL_MODES: dict[str, str] = {
    "ee_delta": "pd_ee_delta_pose",
    "joint_delta": "pd_joint_delta_pos",
}

# Our camera names -> ManiSkill sensor names ("wrist" needs the panda_wristcam robot).
CAMERAS: dict[str, str] = {"front": "base_camera", "wrist": "hand_camera"}

REWARD_MODES: dict[str, str] = {"dense": "normalized_dense", "sparse": "sparse"}

OBS_MODES: dict[str, str] = {"state": "state_dict", "rgb": "rgb", "rgbd": "rgbd"}


def list_maniskill_tasks() -> list[str]:
    """Names `sims.make` accepts with backend='maniskill'."""
    return sorted(MANISKILL_TASKS)
