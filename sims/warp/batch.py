"""`WarpBatch`: N MuJoCo Warp worlds behind the part of `mujoco.batch.Batch`'s interface that
`MujocoBatchedEnv` uses, so both MuJoCo backends run the same env, controllers and tasks.

State layout: `state` is MuJoCo's ``mjSTATE_INTEGRATION`` vector per world (time, qpos, qvel,
act, ..., ctrl, applied forces, mocap poses, qacc_warmstart), the layout `mujoco.batch.Batch`
uses, so a snapshot taken on one MuJoCo backend restores on the other.

Views: `bind(name)` returns a NumPy array of shape (N, ...) like `mujoco.batch.Batch.bind`. On
the CPU device it is a zero-copy view of the Warp array (writes go straight to the simulation).
On a CUDA device it is a host mirror: `WarpBatch` copies written fields to the device before
every physics call and read fields back after it, so task code written against NumPy views
keeps working (at the cost of those copies); `torch(name)` gives the zero-copy device tensor.

Precision: MuJoCo Warp computes in float32 (the CPU backend in float64), so trajectories of the
two backends agree to float32 rounding over a few steps and drift apart slowly after that.
"""

from __future__ import annotations

from typing import Any

import mujoco
import mujoco_warp as mjw
import numpy as np
import torch
import warp as wp

_INTEGRATION = int(mujoco.mjtState.mjSTATE_INTEGRATION)
# Fields the env and tasks write between physics calls (pushed to a CUDA device before each call).
_INPUTS = ("qpos", "qvel", "ctrl", "mocap_pos", "mocap_quat")


class _StateRows:
    """`batch.state`: row reads and writes of the (N, nstate) integration state."""

    def __init__(self, batch: WarpBatch):
        self.batch = batch

    @property
    def shape(self) -> tuple[int, int]:
        return (self.batch.nsim, self.batch.nstate)

    def copy(self) -> np.ndarray:
        return self.batch.get_state()

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        state = self.batch.get_state()
        return state if dtype is None else state.astype(dtype)

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.batch.get_state()[index]

    def __setitem__(self, index: Any, values: Any) -> None:
        ids = np.arange(self.batch.nsim)[index]
        self.batch.set_state(np.atleast_1d(ids), np.asarray(values, dtype=np.float64))


class WarpBatch:
    """N worlds of one `mujoco.MjModel` simulated by MuJoCo Warp on `device`.

    Args:
        model: the compiled host model (the same object the CPU backend would use).
        nsim: number of worlds N.
        device: a Warp device name: "cpu" or "cuda:0".
        nconmax, njmax: contacts / constraints allocated per world (MuJoCo Warp's static sizes).
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        nsim: int,
        device: str = "cpu",
        nconmax: int = 64,
        njmax: int = 256,
    ):
        self.model = model
        self.nsim = nsim
        self.nthread = 1
        self.models = None  # no per-world models (domain randomization is not supported yet)
        self.device = wp.get_device(device)
        self.nstate = mujoco.mj_stateSize(model, _INTEGRATION)
        with wp.ScopedDevice(self.device):
            self.m = mjw.put_model(model)
            self.d = mjw.make_data(model, nworld=nsim, nconmax=nconmax, njmax=njmax)
            self._state = wp.zeros((nsim, self.nstate), dtype=float)
            self._mask = wp.zeros(nsim, dtype=bool)
        self._host = self.device.is_cpu  # NumPy views alias the simulation's memory
        self._views: dict[str, np.ndarray] = {}
        self.warning = np.zeros(
            (nsim, int(mujoco.mjtWarning.mjNWARNING), 2), dtype=np.int32
        )  # none raised
        self._scratch = mujoco.MjData(model)

    # ------------------------------------------------------------------ views
    def bind(self, name: str) -> np.ndarray:
        """(N, ...) NumPy array of Data field `name` (see the module docstring for aliasing)."""
        if name not in self._views:
            array = getattr(self.d, name)
            self._views[name] = array.numpy()  # CPU: a view; CUDA: a host mirror
        return self._views[name]

    def torch(self, name: str) -> torch.Tensor:
        """Zero-copy torch tensor (N, ...) of Data field `name` on the simulation's device."""
        return wp.to_torch(getattr(self.d, name))

    def _push(self) -> None:
        if self._host:
            return
        for name in _INPUTS:
            if name in self._views:
                getattr(self.d, name).assign(self._views[name])

    def _pull(self) -> None:
        if self._host:
            return
        for name, view in self._views.items():
            view[...] = getattr(self.d, name).numpy()

    # ------------------------------------------------------------------ physics
    def _position_stage(self) -> None:
        """Kinematics and composite-body quantities (xpos, xquat, site_xpos, cdof, subtree_com)
        of the current qpos: what `mujoco.batch` computes with stage=mjSTAGE_POS."""
        mjw.kinematics(self.m, self.d)
        mjw.com_pos(self.m, self.d)

    def step(self, nstep: int = 1, stage: Any = None) -> None:
        """`nstep` physics steps of every world, then the position stage of the new state."""
        self._push()
        with wp.ScopedDevice(self.device):
            for _ in range(nstep):
                mjw.step(self.m, self.d)
            self._position_stage()
        self._pull()

    def forward(self, ids: np.ndarray | None = None, stage: Any = None) -> None:
        """The position stage for every world (it is a pure function of qpos, so worlds not in
        `ids` are unchanged)."""
        self._push()
        with wp.ScopedDevice(self.device):
            self._position_stage()
        self._pull()

    def reset(self, ids: np.ndarray, stage: Any = None) -> None:
        """Reset worlds `ids` to the model's defaults (qpos0, zero velocities and controls)."""
        self._push()
        with wp.ScopedDevice(self.device):
            mjw.reset_data(self.m, self.d, reset=self._ids_mask(ids))
        self._pull()

    def _ids_mask(self, ids: np.ndarray) -> wp.array:
        mask = np.zeros(self.nsim, dtype=bool)
        mask[np.asarray(ids, dtype=np.int64)] = True
        self._mask.assign(mask)
        return self._mask

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> _StateRows:
        """(N, nstate) integration state; reads copy, row writes restore those worlds."""
        return _StateRows(self)

    def get_state(self) -> np.ndarray:
        """A float64 copy of every world's integration state, (N, nstate)."""
        self._push()
        with wp.ScopedDevice(self.device):
            mjw.get_state(self.m, self.d, self._state, _INTEGRATION)
        return self._state.numpy().astype(np.float64)

    def set_state(self, ids: np.ndarray, values: np.ndarray) -> None:
        """Write integration-state rows `values` (n, nstate) into worlds `ids`."""
        if values.shape != (len(ids), self.nstate):
            raise ValueError(
                f"State rows must have shape {(len(ids), self.nstate)}; got {values.shape}."
            )
        self._push()
        full = self._state.numpy()
        full[ids] = values
        self._state.assign(full)
        with wp.ScopedDevice(self.device):
            mjw.set_state(self.m, self.d, self._state, _INTEGRATION, active=self._ids_mask(ids))
        self._pull()

    def get_data(self, sim: int, data: mujoco.MjData) -> None:
        """Copy world `sim`'s state into a host `MjData` (for the CPU renderer)."""
        mujoco.mj_setState(self.model, data, self.get_state()[sim], _INTEGRATION)

    # ------------------------------------------------------------------ per-world model fields
    def expanded(self, name: str) -> None:
        """Per-world model fields: none (the Warp backend has no domain randomization yet)."""
        return None

    def expand(self, name: str) -> np.ndarray:
        raise NotImplementedError(
            "The Warp backend does not support per-world model fields (domain randomization) yet."
        )

    def set_const(self, ids: np.ndarray) -> None:
        raise NotImplementedError(
            "The Warp backend does not support per-world model fields (domain randomization) yet."
        )
