"""Tests of sims/mujoco/render.py: tiled batched rendering against the one-Renderer-per-env baseline."""

import dataclasses
import os
import socket

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import mujoco.batch  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from sims.mujoco.render import NaiveRenderer, RenderConfig, TiledRenderer  # noqa: E402

CAMERA_HEIGHT = 1.5  # the "wrist" camera looks straight down from this height

XML = f"""
<mujoco>
  <visual><quality offsamples="0"/></visual>  <!-- as assets/scenes/tabletop.xml: no MSAA -->
  <worldbody>
    <light name="top" pos="0 0 3" dir="0 0 -1" castshadow="true"/>
    <geom name="floor" type="plane" size="2 2 .1" rgba=".5 .5 .5 1"/>
    <camera name="front" pos="0 -1.2 0.8" xyaxes="1 0 0 0 .55 .83"/>
    <camera name="wrist" pos="0 0 {CAMERA_HEIGHT}" xyaxes="1 0 0 0 1 0"/>
    <body name="a" pos="0 0 .1"><freejoint/><geom name="a" type="box" size=".1 .1 .1" rgba="1 0 0 1"/></body>
    <body name="b" pos=".4 0 .1"><freejoint/><geom name="b" type="box" size=".1 .1 .1" rgba="0 1 0 1"/></body>
    <body name="c" pos="-.4 0 .1"><freejoint/><geom name="c" type="box" size=".1 .1 .1" rgba="0 0 1 1"/></body>
  </worldbody>
</mujoco>
"""
CAMERAS = ["front", "wrist"]


def _gl_works(backend: str) -> bool:
    try:
        TiledRenderer(
            mujoco.MjModel.from_xml_string(XML), 1, ["front"], RenderConfig(backend=backend)
        ).close()
        return True
    except Exception:  # noqa: BLE001 - any GL failure means this backend is unusable here
        return False


IMPORT_GL = os.environ["MUJOCO_GL"]  # what mujoco.Renderer (NaiveRenderer) uses


@pytest.fixture(scope="module")
def model() -> mujoco.MjModel:
    if not _gl_works(os.environ["MUJOCO_GL"]):
        # EGL failed: try OSMesa
        os.environ["MUJOCO_GL"] = os.environ["PYOPENGL_PLATFORM"] = "osmesa"
        if not _gl_works("osmesa"):
            pytest.skip("no working OpenGL backend (EGL or OSMesa)")
    return mujoco.MjModel.from_xml_string(XML)


def assert_same_image(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to rasterization rounding: the same scene drawn at another place of the buffer can
    differ by one colour level in a few edge pixels (llvmpipe)."""
    diff = np.abs(a.astype(int) - b)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())


def _batch(model: mujoco.MjModel, n: int) -> mujoco.batch.Batch:
    batch = mujoco.batch.Batch(model, n, 1)
    batch.reset()
    return batch


def test_shapes_dtypes_and_state(model):
    batch = _batch(model, 3)
    batch.bind("qpos")[1, :2] += (0.1, 0.25)  # move box "a" in env 1 only
    with TiledRenderer(model, 3, CAMERAS, RenderConfig(depth=True, width=48, height=32)) as r:
        out = r.render(batch)
        assert set(out) == {"front", "wrist", "front_depth", "wrist_depth"}
        for cam in CAMERAS:
            assert out[cam].shape == (3, 32, 48, 3) and out[cam].dtype == np.uint8
            assert (
                out[cam + "_depth"].shape == (3, 32, 48) and out[cam + "_depth"].dtype == np.float32
            )
            assert_same_image(out[cam][0], out[cam][2])  # equal states, equal images
            assert np.abs(out[cam][0].astype(int) - out[cam][1]).sum() > 1000  # the moved box shows
        assert out["front"].std() > 10  # not a blank image
        sub = r.render(batch, np.array([2, 1]))  # a subset, in the given order
        assert sub["wrist"].shape == (2, 32, 48, 3)
        assert_same_image(sub["wrist"], out["wrist"][[2, 1]])


@pytest.mark.parametrize("shadows", [False, True])
def test_tiled_matches_naive(model, shadows):
    n = 3
    batch = _batch(model, n)
    qpos = batch.bind("qpos")
    qpos[:, 0] += np.linspace(-0.08, 0.08, n)
    qpos[:, 1] += np.linspace(0.05, -0.05, n)
    cfg = RenderConfig(shadows=shadows, shadow_size=256, depth=True)
    if os.environ["MUJOCO_GL"] != IMPORT_GL:
        pytest.skip("mujoco.Renderer is bound to the GL backend that failed")
    with (
        TiledRenderer(model, n, CAMERAS, cfg) as tiled,
        NaiveRenderer(model, n, CAMERAS, cfg) as naive,
    ):
        a, b = tiled.render(batch), naive.render(batch)
    for cam in CAMERAS:
        diff = np.abs(a[cam].astype(int) - b[cam])
        assert diff.max() <= 2 and diff.mean() < 0.05, (cam, diff.max(), diff.mean())
        # mujoco.Renderer renders depth in a second pass; without MSAA both sample pixel centres
        np.testing.assert_allclose(a[cam + "_depth"], b[cam + "_depth"], rtol=1e-4)


def test_per_env_geom_rgba(model):
    batch = _batch(model, 3)
    rgba = batch.expand("geom_rgba")
    rgba[1, model.geom("a").id] = (1, 1, 0, 1)  # box "a" yellow in env 1 only
    with TiledRenderer(model, 3, ["wrist"], RenderConfig()) as r:
        img = r.render(batch)["wrist"].astype(int)
    centre = img[:, 30:34, 30:34].reshape(3, -1, 3).mean(1)  # box "a" fills the image centre
    assert centre[0, 0] - centre[0, 1] > 100  # red (the light's specular whitens it a little)
    assert min(centre[1, 0], centre[1, 1]) - centre[1, 2] > 100  # yellow
    assert_same_image(img[0], img[2])
    assert_same_image(img[1, :, :20], img[0, :, :20])  # the rest of env 1 is unchanged


def test_depth_is_metric(model):
    batch = _batch(model, 2)
    with TiledRenderer(model, 2, ["wrist"], RenderConfig(depth=True)) as r:
        depth = r.render(batch)["wrist_depth"]
    box_top = CAMERA_HEIGHT - 0.2  # box "a" (top at z = 0.2) under the camera
    np.testing.assert_allclose(depth[:, 32, 32], box_top, atol=5e-3)
    np.testing.assert_allclose(
        depth[:, 8, 32], CAMERA_HEIGHT, atol=5e-3
    )  # the floor beside it (y = 0.45)


def test_unknown_camera(model):
    with pytest.raises(ValueError, match="nope") as err:
        TiledRenderer(model, 2, ["front", "nope"], RenderConfig())
    assert "front" in str(err.value) and "wrist" in str(err.value)


def test_multi_pass_and_threads(model):
    n = 11
    batch = _batch(model, n)
    batch.bind("qpos")[:, 0] += np.linspace(-0.1, 0.1, n)
    ref = TiledRenderer(model, n, CAMERAS, RenderConfig(width=32, height=32))
    small = TiledRenderer(
        model, n, CAMERAS, RenderConfig(width=32, height=32, max_buffer_size=96, num_threads=2)
    )
    try:
        assert all(
            w.cols * w.rows < 6 * len(CAMERAS) for w in small._workers
        )  # several passes per thread
        a, b = ref.render(batch), small.render(batch)
        for cam in CAMERAS:
            assert_same_image(a[cam], b[cam])
    finally:
        ref.close()
        small.close()


def _assert_close_images(a: np.ndarray, b: np.ndarray) -> None:
    """Equal but for a few edge pixels: a scene drawn at another tile position of another
    process's buffer can flip single pixels on an edge (llvmpipe's fixed-point rasterization)."""
    diff = np.abs(a.astype(int) - b)
    assert (diff > 1).mean() < 2e-3 and diff.mean() < 0.1, ((diff > 1).mean(), diff.mean())


def _shm_files() -> set[str]:
    return {f for f in os.listdir("/dev/shm") if f.startswith("embodied-render-")} if os.path.isdir("/dev/shm") else set()


def test_render_processes_match_in_process(model):
    n = 7
    batch = _batch(model, n)
    qpos = batch.bind("qpos")
    qpos[:, 0] += np.linspace(-0.1, 0.1, n)
    cfg = RenderConfig(width=32, height=32, depth=True)
    before = _shm_files()
    ref = TiledRenderer(model, n, CAMERAS, cfg)
    timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(1.0)  # as a socket server in the same process may have set it
    try:  # (new sockets would be non-blocking, and the children's pipe with them)
        procs = TiledRenderer(model, n, CAMERAS, dataclasses.replace(cfg, num_processes=3))
    finally:
        socket.setdefaulttimeout(timeout)
    children = list(procs._processes._procs)

    def check(ids=None):
        a, b = ref.render(batch, ids), procs.render(batch, ids)
        for cam in CAMERAS:
            _assert_close_images(a[cam], b[cam])
            np.testing.assert_allclose(a[cam + "_depth"], b[cam + "_depth"], rtol=1e-4)
        return b

    try:
        first = check()
        check(np.array([6, 2, 2, 4, 0]))  # a subset with a repeat, in the given order
        check(np.array([3]))  # fewer envs than processes
        qpos[:, 1] += 0.05  # new states reach the children
        moved = check()
        assert np.abs(moved["front"].astype(int) - first["front"]).sum() > 1000
        rgba = batch.expand("geom_rgba")  # a field expanded after the first call: new layout
        rgba[5, model.geom("a").id] = (1, 1, 0, 1)
        recoloured = check()
        assert np.abs(recoloured["wrist"][5].astype(int) - moved["wrist"][5]).sum() > 1000
        assert_same_image(recoloured["wrist"][4], moved["wrist"][4])
        assert _shm_files() == before  # the shared file is unlinked once mapped
    finally:
        ref.close()
        procs.close()
    assert all(c.poll() is not None for c in children)  # close() stops the children


def test_render_process_death_is_reported(model):
    batch = _batch(model, 4)
    with TiledRenderer(model, 4, ["front"], RenderConfig(num_processes=2)) as r:
        r.render(batch)
        child = r._processes._procs[0]
        child.kill()
        child.wait()
        with pytest.raises(RuntimeError, match=f"render process {child.pid} exited"):
            r.render(batch)
        with pytest.raises(RuntimeError, match="close this renderer"):
            r.render(batch)


def test_bad_process_count(model):
    with pytest.raises(ValueError, match="num_processes"):
        TiledRenderer(model, 2, ["front"], RenderConfig(num_processes=0))


def test_env_renders_through_processes(model):
    """env.render.processes reaches the env's renderer; its observations match one process's."""
    import torch

    import sims

    envs = [
        sims.make("PickCube", num_envs=5, obs_mode="rgb", cameras=("front",), render=sims.RenderSettings(processes=p))
        for p in (1, 2)
    ]
    try:
        for env in envs:
            env.reset(seed=3)
        action = torch.rand(5, envs[0].action_dim, generator=torch.Generator().manual_seed(0)) * 2 - 1
        obs = [env.step(action)[0] for env in envs]
        key = "observation.images.front"
        _assert_close_images(obs[0][key].numpy(), obs[1][key].numpy())
        assert envs[1].renderer._processes.count == 1
    finally:
        for env in envs:
            env.close()
