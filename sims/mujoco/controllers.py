"""Arm controllers: normalized actions in [-1, 1] -> position-servo targets of the Panda.

Physical scale of one control step (``control_hz`` = 20 by default):

======================  ===================  ==================================================
controller              action (A)           meaning of +1
======================  ===================  ==================================================
``ee_delta``            7: dx dy dz rx ry rz g  3 cm TCP translation / 0.15 rad TCP rotation
                                             (world-frame rotation vector) per step
``joint_delta``         8: dq1..dq7 g         0.1 rad per joint per step
======================  ===================  ==================================================

The last entry ``g`` sets the gripper: -1 closed, +1 open (0.08 m), linear in between.
Deltas accumulate on the previous joint targets (ManiSkill's ``use_target=True``), so the
arm moves by the commanded amount per step even though the stiff, damped position servos
lag behind within one step; the targets stay within ``TARGET_WINDOW`` of the measured joint
positions, so a blocked arm does not wind up. The joint targets are `ctrl`, part of the
physics state, so a snapshot restores the controller too. The end-effector controller
solves damped least-squares differential IK at the current configuration.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from sims.mujoco.scene import GRIPPER_MAX_WIDTH

if TYPE_CHECKING:
    from sims.mujoco.env import MujocoBatchedEnv

TARGET_WINDOW = 0.2  # radians: joint targets stay this close to the measured positions


class Controller(abc.ABC):
    """Maps (N, A) normalized actions to the (N, nu) actuator targets of the arm and gripper."""

    action_dim: ClassVar[int]

    def __init__(self, env: MujocoBatchedEnv):
        self.env = env

    @abc.abstractmethod
    def arm_deltas(self, action: np.ndarray) -> np.ndarray:
        """(N, 7) joint target increments for (N, A) float64 actions."""

    def apply(self, action: torch.Tensor) -> None:
        """Write the actuator targets of `action` (N, A) into the batch's ctrl; entries are
        clipped to [-1, 1] (a Gaussian policy's samples may fall outside)."""
        a = np.clip(action.detach().to("cpu", torch.float64).numpy(), -1.0, 1.0)
        env = self.env
        q = env.arm_qpos
        targets = np.clip(env.ctrl[:, :7] + self.arm_deltas(a), q - TARGET_WINDOW, q + TARGET_WINDOW)
        targets = np.clip(targets, env.arm_limits[:, 0], env.arm_limits[:, 1])
        finger = (a[:, -1:] + 1.0) * (GRIPPER_MAX_WIDTH / 4.0)  # per finger, 0 .. 0.04 m
        env.ctrl[:, :7] = targets
        env.ctrl[:, 7:9] = finger


class JointDeltaController(Controller):
    """Joint-position deltas: target += 0.1 rad * action."""

    action_dim = 8
    scale = 0.1

    def arm_deltas(self, action: np.ndarray) -> np.ndarray:
        return self.scale * action[:, :7]


class EEDeltaController(Controller):
    """End-effector delta pose by damped least-squares differential IK on the TCP Jacobian."""

    action_dim = 7
    pos_scale = 0.03
    rot_scale = 0.15
    damping = 0.05

    def __init__(self, env: MujocoBatchedEnv):
        super().__init__(env)
        self.root = env.model.body_rootid[env.hand_body_id]

    def jacobian(self) -> np.ndarray:
        """(N, 6, 7) TCP Jacobian (linear; angular) of the arm joints, as mj_jac computes it, from
        the kinematics of the last physics call (no recomputation: every arm dof is an ancestor
        of the hand)."""
        env = self.env
        cdof = env.cdof[:, env.arm_dof_adr]  # (N, 7, 6): angular, linear motion of each dof
        offset = env.tcp_pos_np - env.subtree_com[:, self.root]  # (N, 3)
        jacr = cdof[:, :, :3]
        jacp = cdof[:, :, 3:] + np.cross(jacr, offset[:, None, :])
        return np.concatenate((jacp, jacr), axis=2).transpose(0, 2, 1)

    def arm_deltas(self, action: np.ndarray) -> np.ndarray:
        jac = self.jacobian()
        twist = np.concatenate((self.pos_scale * action[:, :3], self.rot_scale * action[:, 3:6]), axis=1)
        jjt = jac @ jac.transpose(0, 2, 1) + (self.damping**2) * np.eye(6)
        dq = jac.transpose(0, 2, 1) @ np.linalg.solve(jjt, twist[:, :, None])
        return dq[:, :, 0]


CONTROLLERS: dict[str, type[Controller]] = {
    "ee_delta": EEDeltaController,
    "joint_delta": JointDeltaController,
}
