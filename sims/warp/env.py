"""`WarpBatchedEnv`: the CPU backend's env, controllers and tasks on MuJoCo Warp worlds.

Everything above the physics engine is `MujocoBatchedEnv`'s code: the seam is
`_make_batch`, which returns a `WarpBatch` (same interface as `mujoco.batch.Batch`) instead
of a thread pool of MjData. The robot's observation is gathered from zero-copy torch views of
the Warp arrays (`warp.to_torch`) on the simulation's device. Cameras render with the CPU
tiled renderer from the worlds' states. Domain randomization is not supported yet.
"""

from __future__ import annotations

import torch

from sims.core import EnvConfig
from sims.mujoco.env import MujocoBatchedEnv
from sims.tasks.base import Task
from sims.warp.batch import WarpBatch


def warp_device(device: str) -> str:
    """The Warp device name of a torch device string: "cpu" -> "cpu", "cuda" -> "cuda:0"."""
    torch_device = torch.device(device)
    if torch_device.type == "cpu":
        return "cpu"
    if torch_device.type == "cuda":
        return f"cuda:{torch_device.index or 0}"
    raise ValueError(f"The Warp backend runs on 'cpu' or 'cuda[:i]'; got device {device!r}.")


class WarpBatchedEnv(MujocoBatchedEnv):
    """`BatchedEnv` on MuJoCo Warp. See `sims.core.BatchedEnv` for the contract and
    `sims.warp.batch` for precision (float32) and where the state lives."""

    def __init__(self, cfg: EnvConfig, task: Task):
        if cfg.randomization.enabled:
            raise ValueError(
                "The Warp backend does not support domain randomization yet; use backend='mujoco' "
                "or set randomization.enabled=False."
            )
        self.warp_device = warp_device(cfg.device)
        super().__init__(cfg, task)

    def _make_batch(self) -> WarpBatch:
        return WarpBatch(self.model, self.num_envs, self.warp_device)

    def _proprio(self) -> torch.Tensor:
        b = self.batch
        q, v = b.torch("qpos"), b.torch("qvel")
        tcp = b.torch("site_xpos")[:, self.tcp_site_id]
        hand_quat = b.torch("xquat")[:, self.hand_body_id]
        arm_q, arm_v = torch.as_tensor(self.arm_qpos_adr), torch.as_tensor(self.arm_dof_adr)
        finger_q, finger_v = (
            torch.as_tensor(self.finger_qpos_adr),
            torch.as_tensor(self.finger_dof_adr),
        )
        device = q.device
        proprio = torch.cat(
            (
                q[:, arm_q.to(device)],
                q[:, finger_q.to(device)],
                v[:, arm_v.to(device)],
                v[:, finger_v.to(device)],
                tcp,
                hand_quat,
            ),
            dim=1,
        )
        return proprio.to(self.device, torch.float32)
