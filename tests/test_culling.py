"""Tests of sims/mujoco/culling.py: the renderer skips only geoms that cannot show, so images are
bit-identical with and without culling, and it does skip some."""

import copy
import dataclasses
import os
import threading

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import sims  # noqa: E402
from sims.core import RandomizationConfig  # noqa: E402
from sims.mujoco import culling  # noqa: E402
from sims.mujoco.render import RenderConfig, TiledRenderer, _BatchSource  # noqa: E402

CAMERAS = ("front", "side", "wrist")


def test_outside_frustum_never_culls_a_visible_point():
    """Spheres marked outside contain no point inside the frustum (sampled densely), and the test
    is not vacuous: it marks spheres behind, beside and beyond the camera."""
    rng = np.random.default_rng(0)
    n, aspect, near, far = 4000, 1.5, 0.05, 4.0
    centres = rng.uniform(-3, 3, (n, 3))
    radii = rng.uniform(0.01, 1.0, n)
    quat = rng.normal(size=4)
    mat = np.empty(9)
    mujoco.mju_quat2Mat(mat, quat / np.linalg.norm(quat))
    cam_pos, fovy = np.array([0.2, -0.1, 0.3]), 50.0
    out = culling.outside_frustum(
        centres, radii, cam_pos[None], mat[None], np.array([fovy]), aspect, near, far
    )[0]
    assert 0.2 < out.mean() < 0.9, out.mean()
    # points inside each marked sphere, projected into the camera frame
    directions = rng.normal(size=(out.sum(), 500, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    scale = radii[out, None, None] * rng.uniform(0, 1, (out.sum(), 500, 1)) ** (1 / 3)
    points = centres[out, None] + directions * scale
    surface = centres[out, None] + directions * radii[out, None, None]  # the hardest points
    local = (np.concatenate([points, surface], 1) - cam_pos) @ mat.reshape(3, 3)
    depth = -local[..., 2]
    tan_y = np.tan(np.deg2rad(fovy) / 2)
    visible = (
        (depth >= near)
        & (depth <= far)
        & (np.abs(local[..., 0]) <= depth * tan_y * aspect)
        & (np.abs(local[..., 1]) <= depth * tan_y)
    )
    assert not visible.any()
    # a sphere around the camera's line of sight is kept; a plane (rbound 0) always
    ahead = cam_pos - mat.reshape(3, 3)[:, 2] * 1.0
    kept = culling.outside_frustum(
        np.stack([ahead, cam_pos + 100]), np.array([0.01, 0.0]), cam_pos[None], mat[None],
        np.array([fovy]), aspect, near, far,
    )  # fmt: skip
    assert not kept.any()


@pytest.fixture(scope="module")
def stepped_envs():
    """PickCube, 16 envs after random steps, without and with domain randomization."""
    envs = {}
    for randomized in (False, True):
        env = sims.make(
            "PickCube", num_envs=16, randomization=RandomizationConfig(enabled=randomized)
        )
        env.reset(seed=3)
        gen = torch.Generator().manual_seed(0)
        for _ in range(8):
            env.step(torch.rand(16, env.action_dim, generator=gen) * 2 - 1)
        envs[randomized] = env
    yield envs
    for env in envs.values():
        env.close()


@pytest.mark.parametrize("randomized", [False, True])
def test_culled_images_are_identical(stepped_envs, randomized):
    env = stepped_envs[randomized]
    cfg = RenderConfig(width=48, height=40, depth=True)
    with (
        TiledRenderer(env.model, 16, CAMERAS, cfg) as culled,
        TiledRenderer(env.model, 16, CAMERAS, dataclasses.replace(cfg, culling=False)) as full,
    ):
        a, b = culled.render(env.batch), full.render(env.batch)
        groups = culled._workers[0]._culled_groups(
            np.arange(16), _BatchSource(env.batch, threading.Lock())
        )
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    culled_per_camera = (groups == culling.CULL_GROUP).sum(-1).mean(0)  # (camera,)
    assert (culled_per_camera >= 2).all(), culled_per_camera  # e.g. the upper arm above "front"


@pytest.mark.parametrize("task", sims.list_tasks())
def test_every_task_and_camera_renders_the_same(task):
    """Every camera of every task, randomized, drawn by this process and a render process."""
    env = sims.make(task, num_envs=6, randomization=RandomizationConfig(enabled=True))
    env.reset(seed=5)
    gen = torch.Generator().manual_seed(5)
    for _ in range(6):
        env.step(torch.rand(6, env.action_dim, generator=gen) * 2 - 1)
    cams = tuple(env.camera_names)
    cfg = RenderConfig(width=40, height=32, num_processes=2)
    with (
        TiledRenderer(env.model, 6, cams, cfg) as culled,
        TiledRenderer(env.model, 6, cams, dataclasses.replace(cfg, culling=False)) as full,
    ):
        a, b = culled.render(env.batch), full.render(env.batch)
    env.close()
    for cam in cams:
        assert np.array_equal(a[cam], b[cam]), (task, cam)


def test_static_occlusion(stepped_envs):
    env = stepped_envs[False]
    model = env.model
    with TiledRenderer(model, 2, CAMERAS, RenderConfig()) as r:
        hidden = r._workers[0].hidden
    floor, leg = model.geom("floor").id, model.geom("table_leg").id
    assert hidden[0, floor] and hidden[0, leg]  # under the table, seen from "front"
    assert not hidden[2].any()  # "wrist" moves with the arm: nothing is decided once
    assert not hidden[:, model.geom("table").id].any()

    seethrough = copy.copy(model)
    seethrough.mat_rgba[model.geom_matid[model.geom("table").id], 3] = 0.5
    with TiledRenderer(seethrough, 2, CAMERAS, RenderConfig()) as r:
        assert not r._workers[0].hidden[0, floor]  # a translucent table hides nothing


def test_culling_stays_off_where_it_could_change_images(stepped_envs):
    model = stepped_envs[False].model
    with TiledRenderer(model, 2, ["front"], RenderConfig(shadows=True)) as r:
        assert not r._workers[0].culling  # a culled geom could cast a shadow into view
    msaa = copy.copy(model)
    msaa.vis.quality.offsamples = 4
    with TiledRenderer(msaa, 2, ["front"], RenderConfig()) as r:
        assert r._workers[0].hidden is None  # a hidden geom could own one sample of a pixel
        assert r._workers[0].culling  # the frustum test still holds


def test_occlusion_holds():
    geom_alpha, mat_alpha = np.ones(3), np.ones(2)
    rgba = np.ones((4, 3, 4))
    rgba[..., :3] = np.random.default_rng(0).uniform(size=(4, 3, 3))
    assert culling.occlusion_holds(
        {"geom_rgba": rgba, "light_diffuse": np.ones((4, 2, 3))}, geom_alpha, mat_alpha
    )
    rgba[1, 2, 3] = 0.5
    assert not culling.occlusion_holds({"geom_rgba": rgba}, geom_alpha, mat_alpha)
    assert not culling.occlusion_holds({"cam_pos": np.zeros((4, 1, 3))}, geom_alpha, mat_alpha)
    assert culling.frustum_holds(["geom_rgba", "cam_pos", "cam_quat"])
    assert not culling.frustum_holds(["geom_size"])
    assert culling.frustum_holds(["geom_size", "geom_rbound"])
