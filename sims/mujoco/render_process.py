"""Render processes: `TiledRenderer` shares of the envs drawn in other processes.

Mesa's llvmpipe serializes the draw work of all GL contexts of one process (one rasterizer per
screen, see `sims.mujoco.render`), so a second thread gains nothing, but a second process runs
beside the first. `RenderProcesses` starts `count` children (``python .../render_process.py``,
not multiprocessing: no re-import of the caller's ``__main__`` and no fork of a process holding
threads and GL state). A child imports render.py as a plain module, not the `sims` package
(torch), so it is ready in ~0.5 s. Each child owns one `_Worker` (GL context, offscreen buffer,
scratch model) built from the pickled model.

Per call, the parent copies the state rendering depends on (``qpos``, ``mocap_pos``,
``mocap_quat``: the worker recomputes the kinematics from them, as it does in process) and the
batch's expanded `RENDER_FIELDS` into one shared-memory file, sends each child its env ids over a
socket, and each child writes its tiles into the same file at its positions of the output. The
file lives in /dev/shm and is unlinked as soon as every child has mapped it, so a crash leaves
nothing behind. A child that fails sends its traceback back; one that dies is reported with its
exit code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import mmap
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path

import mujoco
import mujoco.batch
import numpy as np

if __package__:
    from sims.mujoco.render import RENDER_FIELDS, RenderConfig, _Worker
else:  # the child, run as a script: render.py alone, without the `sims` package (torch, gymnasium)
    from render import (  # type: ignore[no-redef, import-not-found]
        RENDER_FIELDS,
        RenderConfig,
        _Worker,
    )

STATE_FIELDS = ("qpos", "mocap_pos", "mocap_quat")
_ALIGN = 64
_SCRIPT = str(Path(__file__).resolve())

Layout = dict[str, tuple[tuple[int, ...], str, int]]  # name -> (shape, dtype, byte offset)


def _layout(arrays: dict[str, tuple[tuple[int, ...], np.dtype]]) -> tuple[Layout, int]:
    layout, offset = {}, 0
    for name, (shape, dtype) in arrays.items():
        layout[name] = (tuple(shape), np.dtype(dtype).str, offset)
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        offset += -(-max(size, 1) // _ALIGN) * _ALIGN
    return layout, offset


def _map(path: str, layout: Layout, size: int) -> dict[str, np.ndarray]:
    """The arrays of `layout` over a map of the file; the map lives as long as they do."""
    with open(path, "r+b") as f:
        buf = mmap.mmap(f.fileno(), size)
    return {
        name: np.ndarray(shape, np.dtype(dtype), buffer=buf, offset=offset)
        for name, (shape, dtype, offset) in layout.items()
    }


class _ArraySource:
    """Env states from the shared arrays (the `source` of `_Worker.render`)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.state = [(name, arrays[name]) for name in STATE_FIELDS]
        self.per_env = {name: arrays[name] for name in arrays if name in RENDER_FIELDS}

    def load(self, env: int, data: mujoco.MjData, fields: dict[str, np.ndarray]) -> None:
        for name, values in self.state:
            getattr(data, name)[...] = values[env]
        for name, values in self.per_env.items():
            fields[name][...] = values[env]


class RenderProcesses:
    """`count` child processes, each rendering the envs it is sent into shared memory.

    Args:
        model: the batch's model (pickled to the children).
        cfg, cam_ids, num_tiles: as `_Worker`; num_tiles is the most tiles a child draws per call.
        count: number of child processes.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        cfg: RenderConfig,
        cam_ids: Sequence[int],
        num_tiles: int,
        count: int,
    ):
        self.cfg, self.ncam = cfg, len(cam_ids)
        self._procs: list[subprocess.Popen] = []
        self._conns: list[Connection] = []
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        init = pickle.dumps((model, dataclasses.asdict(cfg), list(cam_ids), num_tiles))
        for _ in range(count):
            ours, theirs = socket.socketpair()
            for sock in (ours, theirs):  # blocking fds, whatever socket.setdefaulttimeout says
                sock.setblocking(True)
            proc = subprocess.Popen(
                [sys.executable, _SCRIPT, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
            )
            theirs.close()
            conn = Connection(ours.detach())
            conn.send_bytes(init)
            self._procs.append(proc)
            self._conns.append(conn)
        self.count = count
        self._broken: str | None = None  # why the renderer can no longer be used
        self._ready = False
        self._key: tuple | None = None  # what the shared arrays were laid out for
        self._batch: mujoco.batch.Batch | None = None
        self._state: list[tuple[str, np.ndarray]] = []
        self.arrays: dict[str, np.ndarray] = {}

    def _died(self, k: int) -> RuntimeError:
        try:
            code = self._procs[k].wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self._broken = f"render process {self._procs[k].pid} exited (code {code}); see its stderr"
        return RuntimeError(self._broken)

    def _send(self, k: int, msg) -> None:
        try:
            self._conns[k].send(msg)
        except OSError as e:
            raise self._died(k) from e

    def _reply(self, k: int):
        try:
            status, value = self._conns[k].recv()
        except (EOFError, OSError) as e:
            raise self._died(k) from e
        if status == "error":
            raise RuntimeError(f"render process {self._procs[k].pid} failed:\n{value}")
        return value

    def _setup(self, batch: mujoco.batch.Batch) -> dict[str, np.ndarray]:
        """(Re)lay out the shared arrays for this batch's size and expanded fields; returns
        those fields."""
        expanded = {f: v for f in RENDER_FIELDS if (v := batch.expanded(f)) is not None}
        if batch is not self._batch:
            self._batch = batch
            self._state = [(name, batch.bind(name)) for name in STATE_FIELDS]
        key = (batch.nsim, tuple((f, v.shape, v.dtype.str) for f, v in expanded.items()))
        if key == self._key:
            return expanded
        if not self._ready:
            for k in range(len(self._conns)):
                self._reply(k)  # built their GL context
            self._ready = True
        n, h, w = batch.nsim, self.cfg.height, self.cfg.width
        spec = {name: (values.shape, values.dtype) for name, values in self._state}
        spec |= {f: (v.shape, v.dtype) for f, v in expanded.items()}
        spec["rgb"] = ((self.ncam, n, h, w, 3), np.uint8)
        if self.cfg.depth:
            spec["depth"] = ((self.ncam, n, h, w), np.float32)
        layout, size = _layout(spec)
        shm_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix="embodied-render-", dir=shm_dir)
        try:
            os.ftruncate(fd, size)
            os.close(fd)
            self.arrays = _map(path, layout, size)  # the old map goes with its arrays
            for k in range(len(self._conns)):
                self._send(k, ("arrays", (path, layout, size)))
            for k in range(len(self._conns)):
                self._reply(k)
        finally:
            os.unlink(path)
        self._key = key
        return expanded

    def submit(self, batch: mujoco.batch.Batch, ids: np.ndarray, shares: Sequence[slice]) -> None:
        """Copy the batch's state into shared memory and send child k the envs ids[shares[k]]."""
        if self._broken is not None:
            raise RuntimeError(f"{self._broken}; close this renderer and make a new one")
        expanded = self._setup(batch)
        for name, values in [*self._state, *expanded.items()]:
            self.arrays[name][...] = values
        for k, s in enumerate(shares):
            self._send(k, ("render", (ids[s], s.start)))

    def collect(self, rgb: np.ndarray, raw: np.ndarray | None, shares: Sequence[slice]) -> None:
        """Wait for every child and copy its images (positions `shares[k]`) into rgb / raw."""
        errors = []
        for k, s in enumerate(shares):
            try:
                self._reply(k)
            except RuntimeError as e:
                errors.append(e)
                continue
            rgb[:, s] = self.arrays["rgb"][:, s]
            if raw is not None:
                raw[:, s] = self.arrays["depth"][:, s]
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Stop the children and unmap the shared memory."""
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
            conn.close()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._procs, self._conns, self.arrays = [], [], {}


def _child_main(fd: int) -> None:
    conn = Connection(fd)
    model, cfg, cam_ids, num_tiles = pickle.loads(conn.recv_bytes())
    cfg = RenderConfig(**cfg)
    try:
        worker = _Worker(model, cfg, cam_ids, num_tiles)
    except Exception:  # noqa: BLE001 - reported to the parent
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ok", None))
    source, arrays = None, {}
    try:
        while True:
            try:
                msg = conn.recv()
            except EOFError:  # the parent is gone
                break
            if msg is None:
                break
            kind, payload = msg
            try:
                if kind == "arrays":
                    arrays = _map(*payload)  # the old map goes with its arrays
                    source = _ArraySource(arrays)
                else:
                    ids, start = payload
                    stop = start + len(ids)
                    depth = arrays["depth"][:, start:stop] if "depth" in arrays else None
                    worker.render(ids, source, arrays["rgb"][:, start:stop], depth).result()
                conn.send(("ok", None))
            except Exception:  # noqa: BLE001 - reported to the parent, which raises it
                conn.send(("error", traceback.format_exc()))
    finally:
        worker.close()


if __name__ == "__main__":
    _child_main(int(sys.argv[1]))
