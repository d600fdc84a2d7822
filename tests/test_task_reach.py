"""Reach's goal as pixels show it: the sphere and the disc below it, seen by the workspace camera."""

import numpy as np
import torch

import sims
from sims.tasks.reach import GROUND_MARKER_HEIGHT


def green_pixels(image: torch.Tensor) -> np.ndarray:
    """(H, W) bool mask of the markers' green in a uint8 (H, W, 3) image."""
    rgb = image.numpy().astype(int)
    return (rgb[..., 1] > rgb[..., 0] + 40) & (rgb[..., 1] > rgb[..., 2] + 40)


def test_ground_marker_follows_the_goal_through_resets_and_snapshots():
    env = sims.make("Reach", num_envs=4)
    env.reset(seed=0)
    task = env.task
    goal_marker, ground_marker = (
        env.mocap_pos[:, task.goal_mocap],
        env.mocap_pos[:, task.ground_mocap],
    )
    np.testing.assert_allclose(goal_marker, task.goal.double().numpy(), atol=1e-6)
    np.testing.assert_allclose(ground_marker[:, :2], task.goal[:, :2].double().numpy(), atol=1e-6)
    np.testing.assert_allclose(ground_marker[:, 2], GROUND_MARKER_HEIGHT)
    snapshot = env.get_state()
    env.reset(seed=1)
    env.set_state(snapshot)
    np.testing.assert_allclose(env.mocap_pos[:, task.ground_mocap], ground_marker, atol=1e-6)


def test_workspace_camera_shows_the_goal_at_64x64():
    env = sims.make("Reach", num_envs=16, obs_mode="rgb", cameras=("workspace",))
    obs = env.reset(seed=0)
    images = obs["observation.images.workspace"]
    assert images.shape == (16, 64, 64, 3)
    counts = np.array([green_pixels(image).sum() for image in images])
    assert (counts >= 8).mean() >= 0.9, counts  # the arm may hide a marker now and then
    # goals further right (+y) in the world appear further right in the image
    columns = [np.nonzero(green_pixels(image))[1].mean() for image in images]
    assert np.corrcoef(env.task.goal[:, 1].numpy(), columns)[0, 1] > 0.8
