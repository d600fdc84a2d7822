"""Batched camera rendering of a `mujoco.batch.Batch`: many envs as tiles of one offscreen buffer.

`TiledRenderer` renders `len(env_ids) * len(cameras)` images per call. For each env it copies the
env's state into one scratch `MjData` (`batch.get_data`), computes the kinematics a render needs
(`mj_kinematics` + `mj_camlight`, not a full `mj_forward`), and for each camera updates one
`mjvScene` and `mjr_render`s it into that image's tile (a sub-viewport) of a large offscreen
buffer; a single `mjr_readPixels` then reads all tiles of a pass back, and numpy splits them into
images and flips them upright. More tiles than fit one buffer (`RenderConfig.max_buffer_size`)
are rendered in several passes. `NaiveRenderer` is the baseline: one `mujoco.Renderer` per env.

Domain randomization: model fields the batch holds per simulation (`batch.expanded(name)` is not
None, for the visual and kinematic fields in `RENDER_FIELDS`: colours, materials, lights, cameras,
geom sizes and poses...) are copied into the scratch `MjModel` before each env is drawn (~1 us a
field). A batch with caller models (`batch.set_models`) renders each env with its own model; those
models must share the first model's meshes and textures, which are uploaded to GL once.

Measured on the 2-core dev machine (Mesa 22.3 llvmpipe via EGL; a shared machine, so +-20% noise)
with the scene of tests/test_render.py (plane, three boxes, one light, offsamples=0 as in
assets/scenes/tabletop.xml), 256 envs x 1 camera, images/s, renderers interleaved in one process:

    size     shadows(512)   TiledRenderer   NaiveRenderer
    64x64    off            4,500-5,700     2,600
    64x64    on               650             410
    128x128  off            1,650-2,800     1,560
    128x128  on               300             255

On PickCube's tabletop scene (Panda of primitives, before culling) "front": 1,010 vs 810 (64, off), 183 vs 106 (64, on),
845 vs 724 (128, off), 149 vs 125 (128, on). Shadows cost the same in both: the shadow map is
re-rendered for every image. MSAA (`vis.quality.offsamples`, MuJoCo's default 4) costs 3-5x on
llvmpipe (64x64, no shadows: ~1,900 tiled); the renderer uses the model's setting. With MSAA the
depth buffer resolves to one sample per pixel, not the pixel centre (edges shift by up to half a
pixel against mujoco.Renderer's depth, which renders again without MSAA); without it they agree.

Per env, `batch.get_data` costs ~0.5 us, `mj_kinematics` + `mj_camlight` ~1 us, and
`batch.get_model(sim, model)` only ~4-5 us, all negligible next to the GL work; the renderer still
copies only the expanded fields of `RENDER_FIELDS`, leaving its own visual settings alone.

Threads (`RenderConfig.num_threads`): each thread owns a GL context, an offscreen buffer, a scratch
model/data/scene and a contiguous share of the envs. Two threads gave the same throughput as one
(64x64: 5,665 vs 5,724; 128x128: 2,882 vs 2,817; with shadows 644 vs 650 images/s). A bare
mjr_render loop, at a time when two processes did run 2x faster than one (3,900 vs 1,900/s), gave
2,240-2,410/s with two contexts in two threads vs 2,340/s in one, although mjr_render releases the
GIL (checked): llvmpipe queues the scenes of all contexts of a process to one shared rasterizer
(`screen->rast` under `rast_mutex`). Hence the default of 1; more threads may pay off with a GPU
driver; on llvmpipe, separate processes do scale.

Processes (`RenderConfig.num_processes`, the env's `render.processes`): P > 1 starts P - 1 render
processes (`sims.mujoco.render_process`); this process and each of them draw a contiguous share of
the envs, the children from the batch's state copied into shared memory per call. A profile of the
PickCube scene (perf, 64x64, one process) puts ~70% of the CPU time in the calling thread (Mesa's
draw module: vertex shading, clipping, binning) and ~15% in each of llvmpipe's two rasterizer
threads, so a second process's draw thread runs on the otherwise idle share of the second core:
interleaved on the 2-core machine, 256 envs at 64x64, P = 2 gave 1.5-1.7x the images/s of P = 1
and P = 3 1.3-1.9x (`benchmarks/render_throughput.py` measures P = cores against P = 1). Each
process costs ~0.5 s to start and one GL context; the default stays 1, as small
batches (tests, evaluation) would pay the start-up for nothing. In a whole env step (PickCube,
front + wrist at 64x64, physics on the thread pool first) P = 2 / 3 gave 1.2 / 1.3x the env
steps/s of P = 1 at 64 envs and 1.3x at 16 (interleaved, medians of 5 rounds). CPU time per
image, read from /proc for this process and its children (256 envs, 64x64, throwaway script):
700-800 us for P = 1-3 and for children with LP_NUM_THREADS 0, 1 or the default, vs ~980 us for
NaiveRenderer, which runs on about one core; so on two cores processes cap the ratio to the
naive renderer near 2.5x, whatever their number. Per-env caller models
(`batch.set_models`) are not shipped to the children: such a batch renders in this process.

Culling (`RenderConfig.culling`, on by default; `sims/mujoco/culling.py`): 3x needed less GL work
per tile, and each tile draws only the geoms its camera can see, with bit-identical images. On
PickCube's "front" camera (64x64, 256 envs) it drops ~6 of the 21 geoms: the upper arm above the
image (frustum) and the floor and table leg under the table (static occlusion); the process's CPU
time per image fell from 521-714 to 391-535 us (two interleaved runs, one process; throwaway
probe), and `benchmarks/render_throughput.py` measures the images/s with and without it (1.36x).
The frustum test costs ~10 us per env (its own kinematics pass, vectorized over the envs).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import mujoco
import mujoco.batch
import numpy as np

if __package__:
    from sims.mujoco import culling
else:  # a render process, run as a script: the modules beside it, without the `sims` package
    import culling  # type: ignore[no-redef, import-not-found]

# Model fields read by mj_kinematics / mj_camlight / mjv_updateScene / mjr_render that a batch may
# hold per simulation; the renderer copies those that are expanded into its scratch model per env.
# fmt: off
RENDER_FIELDS: tuple[str, ...] = tuple(
    name
    for name in (
        "body_pos", "body_quat", "body_ipos", "body_iquat", "body_sameframe", "jnt_pos", "jnt_axis",
        "geom_pos", "geom_quat", "geom_sameframe", "geom_size", "geom_rbound", "geom_aabb",
        "geom_rgba", "geom_matid", "geom_group", "geom_type", "geom_dataid",
        "site_pos", "site_quat", "site_sameframe", "site_size", "site_rgba", "site_matid",
        "site_group", "site_type",
        "mat_rgba", "mat_emission", "mat_specular", "mat_shininess", "mat_reflectance",
        "mat_metallic", "mat_roughness", "mat_texid", "mat_texrepeat", "mat_texuniform",
        "light_pos", "light_dir", "light_pos0", "light_dir0", "light_poscom0", "light_mode",
        "light_bodyid", "light_targetbodyid", "light_active", "light_type", "light_castshadow",
        "light_diffuse", "light_ambient", "light_specular", "light_attenuation", "light_cutoff",
        "light_exponent", "light_intensity", "light_range", "light_bulbradius", "light_texid",
        "cam_pos", "cam_quat", "cam_pos0", "cam_mat0", "cam_poscom0", "cam_mode", "cam_bodyid",
        "cam_targetbodyid", "cam_fovy", "cam_ipd", "cam_projection", "cam_intrinsic",
        "cam_sensorsize", "tendon_rgba", "tendon_width", "tendon_matid", "flex_rgba", "flex_matid",
    )
    if name in mujoco.batch.MODEL_FIELDS
)
# fmt: on
MAX_GEOM = 10_000  # mjvScene capacity, as mujoco.Renderer's default
_CAT_ALL = mujoco.mjtCatBit.mjCAT_ALL


@dataclass
class RenderConfig:
    """Image size and visual settings of TiledRenderer / NaiveRenderer."""

    width: int = 64
    height: int = 64
    shadows: bool = False  # mjRND_SHADOW
    shadow_size: int = 512  # model.vis.quality.shadowsize, applied when shadows are on
    reflections: bool = False  # mjRND_REFLECTION
    skybox: bool = False  # mjRND_SKYBOX
    depth: bool = False  # also return metric depth (float32 meters)
    backend: str = "egl"  # MUJOCO_GL value: "egl" or "osmesa" (only if MUJOCO_GL is unset)
    num_threads: int = 1  # GL contexts (threads), each with a share of the envs; see module doc
    num_processes: int = 1  # processes drawing shares of the envs, this one included; module doc
    max_buffer_size: int = 2048  # offscreen buffer side limit, pixels; more tiles -> several passes
    culling: bool = True  # skip geoms a camera cannot see: same images (sims/mujoco/culling.py)


def gl_context_class(backend: str) -> type:
    """The GLContext class for MUJOCO_GL, which is set to `backend` first if it is unset.

    `mujoco.GLContext` is fixed when mujoco is imported, so the backend module is imported here.
    """
    gl = os.environ.setdefault("MUJOCO_GL", backend).lower()
    if gl == "egl":
        from mujoco.egl import GLContext
    elif gl == "osmesa":
        from mujoco.osmesa import GLContext
    else:
        GLContext = mujoco.GLContext
    return GLContext


def camera_ids(model: mujoco.MjModel, cameras: Sequence[str]) -> list[int]:
    """Camera ids of `cameras`; ValueError naming the unknown camera and the model's cameras."""
    names = [model.camera(i).name for i in range(model.ncam)]
    if isinstance(cameras, str) or not cameras:
        raise ValueError(
            f"cameras must be a non-empty sequence of names from {names}, got {cameras!r}"
        )
    for cam in cameras:
        if cam not in names:
            raise ValueError(f"unknown camera {cam!r}; the model's cameras are {names}")
    return [names.index(cam) for cam in cameras]


def _scene(model: mujoco.MjModel, cfg: RenderConfig) -> mujoco.MjvScene:
    scene = mujoco.MjvScene(model, maxgeom=MAX_GEOM)
    scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = cfg.shadows
    scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = cfg.reflections
    scene.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = cfg.skybox
    return scene


def _fixed_camera(cam_id: int) -> mujoco.MjvCamera:
    cam = mujoco.MjvCamera()
    cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
    cam.fixedcamid = cam_id
    return cam


def linear_depth(raw: np.ndarray, model: mujoco.MjModel, orthographic: bool = False) -> np.ndarray:
    """Metric depth, float32 meters, from depth-buffer values read with mjDEPTH_ZEROFAR.

    The inverse of MuJoCo's reversed-Z projection with znear/zfar = vis.map.znear/zfar *
    stat.extent, computed as `mujoco.Renderer` does.
    """
    near = np.float32(model.vis.map.znear * model.stat.extent)
    far = np.float32(model.vis.map.zfar * model.stat.extent)
    z = raw.astype(np.float64)
    if orthographic:
        return (far - z * (far - near)).astype(np.float32)
    c = np.float32(-0.5) * (-(far + near) / (far - near)) - np.float32(0.5)
    d = np.float32(-0.5) * (-(np.float32(2) * far * near) / (far - near))
    return (d / (z + c)).astype(np.float32)


def _shares(n: int, k: int) -> list[slice]:
    """k contiguous slices splitting range(n) as evenly as possible."""
    bounds = np.linspace(0, n, k + 1).round().astype(int)
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _untile(buf: np.ndarray, h: int, w: int, nenv: int, ncam: int) -> np.ndarray:
    """Images (ncam, nenv, h, w, ...) from a read of tiles, (rows * h, cols * w, ...), whose tile t
    (env t // ncam, camera t % ncam) is column t % cols, row t // cols, drawn bottom-up by GL."""
    rows, cols, rest = buf.shape[0] // h, buf.shape[1] // w, buf.shape[2:]
    tiles = buf.reshape(rows, h, cols, w, *rest).swapaxes(1, 2).reshape(rows * cols, h, w, *rest)
    return tiles[: nenv * ncam, ::-1].reshape(nenv, ncam, h, w, *rest).swapaxes(0, 1)


class _Worker:
    """One GL context on its own thread, with its offscreen buffer of `cols x rows` tiles and its
    scratch model, data and scene."""

    def __init__(
        self, model: mujoco.MjModel, cfg: RenderConfig, cam_ids: list[int], num_tiles: int
    ):
        self.cfg, self.cam_ids = cfg, cam_ids
        w, h, side = cfg.width, cfg.height, max(cfg.max_buffer_size, cfg.width, cfg.height)
        self.cols = max(1, min(num_tiles, side // w))
        self.rows = max(1, min(math.ceil(num_tiles / self.cols), side // h))
        self.model = copy.copy(model)
        self.model.vis.global_.offwidth = self.cols * w
        self.model.vis.global_.offheight = self.rows * h
        self.model.vis.quality.shadowsize = cfg.shadow_size
        self.data = mujoco.MjData(self.model)
        self.scene = _scene(self.model, cfg)
        self.option = mujoco.MjvOption()
        self.option.geomgroup[culling.CULL_GROUP] = 0
        # Culled geoms draw nothing only if no shadow map or reflection shows what the camera
        # does not see (sims/mujoco/culling.py).
        self.culling = cfg.culling and not cfg.shadows and not cfg.reflections
        self.frustum_cams = culling.frustum_cameras(model, cam_ids)
        self.groups = self.model.geom_group.copy()  # the scratch model's own, restored per pass
        self.geom_alpha, self.mat_alpha = model.geom_rgba[:, 3].copy(), model.mat_rgba[:, 3].copy()
        self.hidden: np.ndarray | None = None  # (ncam, ngeom) occluded geoms, set by _init_gl
        self.cameras = [_fixed_camera(i) for i in cam_ids]
        self.fields = {name: getattr(self.model, name) for name in RENDER_FIELDS}  # writable views
        self.viewports = [
            mujoco.MjrRect((t % self.cols) * w, (t // self.cols) * h, w, h)
            for t in range(self.cols * self.rows)
        ]
        self.rgb = np.empty(self.cols * w * self.rows * h * 3, np.uint8)  # flat: reads of any rect
        self.depth = np.empty(self.cols * w * self.rows * h, np.float32) if cfg.depth else None
        self.thread = ThreadPoolExecutor(1)  # a GL context stays current on one thread
        self.thread.submit(self._init_gl, gl_context_class(cfg.backend)).result()

    def _init_gl(self, context_cls: type) -> None:
        self.gl = context_cls(self.model.vis.global_.offwidth, self.model.vis.global_.offheight)
        self.gl.make_current()
        self.con = mujoco.MjrContext(self.model, mujoco.mjtFontScale.mjFONTSCALE_100)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self.con)
        self.con.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR
        if self.culling and self.model.vis.quality.offsamples == 0:
            self.hidden = self._statically_hidden()

    def _statically_hidden(self) -> np.ndarray:
        """(ncam, ngeom) bool: for each camera fixed in the world, the world-fixed geoms that no
        pixel of a segmentation render of the world-fixed opaque geoms alone shows (see
        sims/mujoco/culling.py); all False for other cameras."""
        m, d, scene = self.model, self.data, self.scene
        candidates = culling.world_fixed_opaque_geoms(m)
        fixed_cams = culling.world_fixed_cameras(m, self.cam_ids)
        hidden = np.zeros((len(self.cam_ids), m.ngeom), bool)
        if not candidates.any() or not fixed_cams.any():
            return hidden
        mujoco.mj_kinematics(m, d)
        mujoco.mj_camlight(m, d)
        w, h = self.cfg.width, self.cfg.height
        rgb = np.empty((h, w, 3), np.uint8)
        m.geom_group[~candidates] = culling.CULL_GROUP
        scene.flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = scene.flags[
            mujoco.mjtRndFlag.mjRND_IDCOLOR
        ] = 1
        try:
            for c, cam in enumerate(self.cameras):
                if fixed_cams[c]:
                    mujoco.mjv_updateScene(m, d, self.option, None, cam, _CAT_ALL, scene)
                    mujoco.mjr_render(self.viewports[0], scene, self.con)
                    mujoco.mjr_readPixels(rgb, None, self.viewports[0], self.con)
                    hidden[c] = candidates & ~culling.segmented_geoms(rgb, scene, m.ngeom)
        finally:
            m.geom_group[:] = self.groups
            scene.flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = scene.flags[
                mujoco.mjtRndFlag.mjRND_IDCOLOR
            ] = 0
        return hidden

    def render(self, env_ids, source, rgb_out, depth_out) -> Future:
        """Render env_ids into rgb_out (ncam, n, H, W, 3) and depth_out (ncam, n, H, W) raw [0, 1].

        source.load(env, data, fields) puts env's state into data (and its per-env model fields
        into fields, this worker's writable views of its scratch model) and returns the model to
        draw it with."""
        return self.thread.submit(self._render, env_ids, source, rgb_out, depth_out)

    def _render(self, env_ids, source, rgb_out, depth_out) -> None:
        w, h, ncam = self.cfg.width, self.cfg.height, len(self.cameras)
        self.gl.make_current()
        per_pass = max(1, self.cols * self.rows // ncam)
        for start in range(0, len(env_ids), per_pass):
            chunk = env_ids[start : start + per_pass]
            groups = self._culled_groups(chunk, source) if self.culling else None
            try:
                for k, env in enumerate(chunk):
                    model = source.load(int(env), self.data, self.fields)
                    if model is None:  # this worker's scratch model, holding env's expanded fields
                        model = self.model
                    mujoco.mj_kinematics(model, self.data)
                    mujoco.mj_camlight(model, self.data)
                    for c, cam in enumerate(self.cameras):
                        if groups is not None:
                            self.fields["geom_group"][...] = groups[k, c]
                        mujoco.mjv_updateScene(
                            model, self.data, self.option, None, cam, _CAT_ALL, self.scene
                        )
                        mujoco.mjr_render(self.viewports[k * ncam + c], self.scene, self.con)
            finally:
                if groups is not None:
                    self.fields["geom_group"][...] = self.groups
            # One read of the rect holding this pass's tiles.
            ntiles = len(chunk) * ncam
            rows, cols = math.ceil(ntiles / self.cols), min(ntiles, self.cols)
            rgb = self.rgb[: rows * h * cols * w * 3].reshape(rows * h, cols * w, 3)
            depth = None
            if depth_out is not None:
                assert self.depth is not None  # depth_out comes with cfg.depth
                depth = self.depth[: rows * h * cols * w].reshape(rows * h, cols * w)
            mujoco.mjr_readPixels(rgb, depth, mujoco.MjrRect(0, 0, cols * w, rows * h), self.con)
            rgb_out[:, start : start + len(chunk)] = _untile(rgb, h, w, len(chunk), ncam)
            if depth is not None:
                depth_out[:, start : start + len(chunk)] = _untile(depth, h, w, len(chunk), ncam)

    def _culled_groups(self, env_ids, source) -> np.ndarray | None:
        """(len(env_ids), ncam, ngeom) geom groups to draw each env's view with: its own, but
        CULL_GROUP (hidden) for the geoms that camera cannot see (sims/mujoco/culling.py); None
        if no test applies. The frustum test computes the envs' kinematics once more here, to
        test all envs in one vectorized call."""
        per_env = source.per_env
        if per_env is None:  # caller models: this worker does not regroup their geoms
            return None
        frustum = culling.frustum_holds(list(per_env))
        hidden = self.hidden  # statically occluded geoms, where that test holds for these envs
        if hidden is not None and not culling.occlusion_holds(
            per_env, self.geom_alpha, self.mat_alpha
        ):
            hidden = None
        m, d, n = self.model, self.data, len(env_ids)
        if not frustum:
            if hidden is None:
                return None
            return np.broadcast_to(
                np.where(hidden, culling.CULL_GROUP, self.groups), (n, *hidden.shape)
            )
        xpos, rbound = np.empty((n, m.ngeom, 3)), np.empty((n, m.ngeom))
        groups = np.empty((n, m.ngeom), m.geom_group.dtype)
        cam_xpos, cam_xmat, fovy = (
            np.empty((n, m.ncam, 3)),
            np.empty((n, m.ncam, 9)),
            np.empty((n, m.ncam)),
        )
        for k, env in enumerate(env_ids):
            source.load(int(env), d, self.fields)
            mujoco.mj_kinematics(m, d)
            mujoco.mj_camlight(m, d)
            xpos[k], rbound[k], groups[k] = d.geom_xpos, m.geom_rbound, m.geom_group
            cam_xpos[k], cam_xmat[k], fovy[k] = d.cam_xpos, d.cam_xmat, m.cam_fovy
        ids, extent = self.cam_ids, m.stat.extent
        outside = culling.outside_frustum(
            xpos, rbound, cam_xpos[:, ids], cam_xmat[:, ids], fovy[:, ids],
            self.cfg.width / self.cfg.height, m.vis.map.znear * extent, m.vis.map.zfar * extent,
        )  # fmt: skip
        outside &= self.frustum_cams[:, None]
        if hidden is not None:
            outside |= hidden
        return np.where(outside, culling.CULL_GROUP, groups[:, None])

    def close(self) -> None:
        def free():
            self.con.free()
            self.gl.free()

        self.thread.submit(free).result()
        self.thread.shutdown()


class _BatchSource:
    """Env states read from the batch in this process (the `source` of `_Worker.render`)."""

    def __init__(self, batch: mujoco.batch.Batch, lock: threading.Lock):
        self.batch, self.lock = batch, lock
        self.models = batch.models  # caller models (set_models), else per-env expanded fields
        # Per-env expanded fields, None with caller models (which culling leaves alone).
        self.per_env = (
            None
            if self.models is not None
            else {f: v for f in RENDER_FIELDS if (v := batch.expanded(f)) is not None}
        )

    def load(
        self, env: int, data: mujoco.MjData, fields: dict[str, np.ndarray]
    ) -> mujoco.MjModel | None:
        with self.lock:  # a Batch must not be called from two threads at once
            self.batch.get_data(env, data)
        if self.models is not None:
            return self.models if isinstance(self.models, mujoco.MjModel) else self.models[env]
        assert self.per_env is not None  # None only with caller models
        for name, values in self.per_env.items():
            fields[name][...] = values[env]
        return None


class TiledRenderer:
    """Renders several cameras of many envs of one mujoco.batch.Batch as tiles of one offscreen buffer.

    Args:
        model: the batch's model (the renderer works on its own copies).
        num_envs: envs rendered per call, usually `batch.nsim`; sizes the offscreen buffer.
        cameras: names of the model's cameras to render.
        cfg: image size and visual settings.
    """

    def __init__(
        self, model: mujoco.MjModel, num_envs: int, cameras: Sequence[str], cfg: RenderConfig
    ):
        self.cfg, self.num_envs = cfg, num_envs
        self.cameras = tuple(cameras)
        cam_ids = camera_ids(model, self.cameras)
        self._orthographic = [
            model.cam_projection[i] == mujoco.mjtProjection.mjPROJ_ORTHOGRAPHIC for i in cam_ids
        ]
        self._model = model
        if cfg.num_threads < 1 or cfg.num_processes < 1:
            raise ValueError(
                f"num_threads and num_processes must be >= 1, got {cfg.num_threads}, "
                f"{cfg.num_processes}"
            )
        nthread = max(1, min(cfg.num_threads, num_envs))
        tiles = math.ceil(num_envs / nthread) * len(cam_ids)
        self._processes = None
        if cfg.num_processes > 1:
            from sims.mujoco.render_process import RenderProcesses

            share = math.ceil(num_envs / cfg.num_processes) * len(cam_ids)
            self._processes = RenderProcesses(model, cfg, cam_ids, share, cfg.num_processes - 1)
            tiles = math.ceil(share / nthread)
        self._workers: list[_Worker] | None = [
            _Worker(model, cfg, cam_ids, tiles) for _ in range(nthread)
        ]
        self._lock = threading.Lock()

    def render(
        self, batch: mujoco.batch.Batch, env_ids: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Render `env_ids` (default: all of the batch's envs) from their current state.

        Returns {camera_name: uint8 (n, H, W, 3)} and, with cfg.depth, {camera_name + "_depth":
        float32 (n, H, W)} in meters (distance along the camera axis), n = len(env_ids).
        """
        if self._workers is None:
            raise RuntimeError("render() after close()")
        ids = (
            np.arange(batch.nsim)
            if env_ids is None
            else np.asarray(env_ids, dtype=np.int64).reshape(-1)
        )
        if ids.size and (ids.min() < 0 or ids.max() >= batch.nsim):
            raise IndexError(f"env ids must be in [0, {batch.nsim}), got {ids}")
        n, ncam, h, w = len(ids), len(self.cameras), self.cfg.height, self.cfg.width
        rgb = np.empty((ncam, n, h, w, 3), np.uint8)
        raw = np.empty((ncam, n, h, w), np.float32) if self.cfg.depth else None
        source = _BatchSource(batch, self._lock)
        own, others = slice(0, n), []
        if self._processes is not None and source.models is None and n <= batch.nsim:
            own, *others = _shares(n, self._processes.count + 1)
            self._processes.submit(batch, ids, others)
        futures = [
            worker.render(ids[s], source, rgb[:, s], None if raw is None else raw[:, s])
            for worker, s in zip(self._workers, _shares(own.stop, len(self._workers)), strict=True)
            if s.stop > s.start
        ]
        for future in futures:
            future.result()
        if others:
            assert self._processes is not None  # others are the render processes' shares
            self._processes.collect(rgb, raw, others)
        out = {name: rgb[c] for c, name in enumerate(self.cameras)}
        if raw is not None:
            for c, name in enumerate(self.cameras):
                out[name + "_depth"] = linear_depth(raw[c], self._model, self._orthographic[c])
        return out

    def close(self) -> None:
        """Free the GL contexts and threads; render() raises afterwards."""
        for worker in self._workers or ():
            worker.close()
        self._workers = None
        if self._processes is not None:
            self._processes.close()
            self._processes = None

    def __enter__(self) -> TiledRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NaiveRenderer:
    """Baseline with TiledRenderer's API and visual settings: one `mujoco.Renderer` (GL context,
    offscreen buffer, readback per image) per env, on a per-env model copy filled by
    `batch.get_model`. Its GL backend is the one MUJOCO_GL chose when mujoco was imported.
    With cfg.depth every camera is rendered a second time, in depth mode."""

    def __init__(
        self, model: mujoco.MjModel, num_envs: int, cameras: Sequence[str], cfg: RenderConfig
    ):
        self.cfg, self.num_envs = cfg, num_envs
        self.cameras = tuple(cameras)
        self._cam_ids = camera_ids(model, self.cameras)
        os.environ.setdefault("MUJOCO_GL", cfg.backend)
        self._models, self._renderers = [], []
        for _ in range(num_envs):
            m = copy.copy(model)
            m.vis.global_.offwidth, m.vis.global_.offheight = cfg.width, cfg.height
            m.vis.quality.shadowsize = cfg.shadow_size
            r = mujoco.Renderer(m, height=cfg.height, width=cfg.width, max_geom=MAX_GEOM)
            r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = cfg.shadows
            r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = cfg.reflections
            r.scene.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = cfg.skybox
            self._models.append(m)
            self._renderers.append(r)
        self._data = mujoco.MjData(model)

    def render(
        self, batch: mujoco.batch.Batch, env_ids: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """As TiledRenderer.render; env i is drawn by renderer i % num_envs."""
        ids = (
            np.arange(batch.nsim)
            if env_ids is None
            else np.asarray(env_ids, dtype=np.int64).reshape(-1)
        )
        n, h, w = len(ids), self.cfg.height, self.cfg.width
        out: dict[str, np.ndarray] = {
            name: np.empty((n, h, w, 3), np.uint8) for name in self.cameras
        }
        if self.cfg.depth:
            out.update({name + "_depth": np.empty((n, h, w), np.float32) for name in self.cameras})
        for k, env in enumerate(ids):
            renderer, model = (
                self._renderers[env % self.num_envs],
                self._models[env % self.num_envs],
            )
            batch.get_model(int(env), model)
            batch.get_data(int(env), self._data)
            mujoco.mj_kinematics(model, self._data)
            mujoco.mj_camlight(model, self._data)
            for name, cam in zip(self.cameras, self._cam_ids, strict=True):
                renderer.update_scene(self._data, camera=cam)
                renderer.render(out=out[name][k])
                if self.cfg.depth:
                    renderer.enable_depth_rendering()
                    renderer.render(out=out[name + "_depth"][k])
                    renderer.disable_depth_rendering()
        return out

    def set_shadows(self, shadows: bool) -> None:
        """Switch shadows on or off in every Renderer, as if built with cfg.shadows=shadows (the
        shadow map's size is fixed at construction; building 256 Renderers takes ~45 s)."""
        self.cfg = dataclasses.replace(self.cfg, shadows=shadows)
        for r in self._renderers:
            r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = shadows

    def close(self) -> None:
        """Free every Renderer."""
        for r in self._renderers:
            r.close()
        self._renderers = []

    def __enter__(self) -> NaiveRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
