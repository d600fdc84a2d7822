"""Culling for `TiledRenderer`: geoms that cannot put a pixel into a camera's image are not drawn.

On the CPU rasterizer the draw work of each geom dominates a small frame (`sims.mujoco.render`), so
geoms a camera cannot see are moved to `CULL_GROUP`, a geom group the renderer's `MjvOption` hides,
for that camera's tile. Two tests, both exact (a culled geom has no fragment that could win a
pixel, so the image is bit-identical):

- **Frustum** (`outside_frustum`): per env and camera, a geom whose bounding sphere (`geom_rbound`
  about `geom_xpos`) lies wholly outside the view frustum. Vectorized over the envs of a pass.
- **Static occlusion** (`_Worker._statically_hidden` in `sims.mujoco.render`, with
  `world_fixed_opaque_geoms`, `world_fixed_cameras` and `segmented_geoms` here): for a camera
  fixed in the world, a geom fixed in the world that other world-fixed opaque geoms cover in
  every pixel (on the tabletop scene, the floor and the table leg under the table seen from
  "front"). Decided once per renderer, from a segmentation render of the world-fixed opaque geoms
  alone: a geom that wins no pixel there wins none when moving geoms are added (depth test,
  opaque geoms, same draw order), whatever the state.

Both hold only without shadows and reflections (a culled geom could cast a shadow into view or be
mirrored into it) and static occlusion only without MSAA (a geom could win one sample of a pixel).
Per-env model fields (domain randomization) can break them: `frustum_holds` and
`occlusion_holds` say for which fields the tests stay valid.

On PickCube's front camera at 64x64 frustum culling drops ~4 of the 21 geoms (the upper arm,
above the image) and occlusion 2 (floor, table leg): 1.36-1.39x the images/s of drawing every geom
(`benchmarks/render_throughput.py`). tests/test_culling.py checks the images bit-identical on
every camera of every task, with domain randomization and a render process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import mujoco
import numpy as np

CULL_GROUP = mujoco.mjNGROUP - 1  # geom group the renderer's MjvOption hides: culled geoms go there

# Per-env fields after which a geom's extent may exceed its geom_rbound, unless rbound varies too.
_EXTENT_FIELDS = ("geom_size", "geom_type", "geom_dataid")
# Per-env camera fields the frustum test does not model (cameras to cull are chosen once).
_CAMERA_FIELDS = ("cam_projection", "cam_sensorsize", "cam_intrinsic")
# Per-env fields that cannot change which world-fixed geom covers which: lights, shading, and
# what is not a geom. Colours (geom_rgba, mat_rgba) qualify while alpha stays as built.
_SHADING_PREFIXES = ("light_", "site_", "tendon_", "flex_")
_SHADING_FIELDS = {
    "mat_emission", "mat_specular", "mat_shininess", "mat_reflectance", "mat_metallic",
    "mat_roughness", "jnt_pos", "jnt_axis", "body_ipos", "body_iquat",
}  # fmt: skip


def outside_frustum(
    geom_xpos: np.ndarray,
    geom_rbound: np.ndarray,
    cam_xpos: np.ndarray,
    cam_xmat: np.ndarray,
    cam_fovy: np.ndarray,
    aspect: float,
    near: float,
    far: float,
) -> np.ndarray:
    """Which geoms lie wholly outside which camera's view frustum, over a batch of envs.

    Args:
        geom_xpos: (..., G, 3) geom centres; geom_rbound: (..., G) their bounding radii.
        cam_xpos, cam_xmat: (..., C, 3) and (..., C, 9) camera poses (looking along -z, y up).
        cam_fovy: (..., C) vertical fields of view, degrees.
        aspect: image width / height; near, far: clip distances (`vis.map.znear / zfar *
            stat.extent`), as `mjv_updateScene` + `mjr_render` set up a fixed perspective camera.

    Returns:
        (..., C, G) bool. Each sphere is tested against each plane with its radius padded by
        0.1% + 1 um, so a geom marked outside cannot put a fragment into the image. Planes
        (rbound 0) are never outside.
    """
    rel = geom_xpos[..., None, :, :] - cam_xpos[..., :, None, :]  # (..., C, G, 3)
    local = np.matmul(rel, cam_xmat.reshape(*cam_xmat.shape[:-1], 3, 3))  # camera frame
    x, y, depth = np.abs(local[..., 0]), np.abs(local[..., 1]), -local[..., 2]
    radius = (geom_rbound * 1.001 + 1e-6)[..., None, :]
    tan_y = np.tan(np.deg2rad(cam_fovy) / 2)[..., None]
    tan_x = tan_y * aspect
    out = (depth + radius < near) | (depth - radius > far)
    out |= x - depth * tan_x > radius * np.sqrt(1 + tan_x**2)
    out |= y - depth * tan_y > radius * np.sqrt(1 + tan_y**2)
    return out & (geom_rbound > 0)[..., None, :]


def frustum_cameras(model: mujoco.MjModel, cam_ids: Sequence[int]) -> np.ndarray:
    """(C,) bool: the cameras `outside_frustum` models: perspective, field of view from fovy."""
    perspective = int(mujoco.mjtProjection.mjPROJ_PERSPECTIVE)
    return np.array(
        [
            model.cam_projection[i] == perspective and not model.cam_sensorsize[i].any()
            for i in cam_ids
        ],
        dtype=bool,
    )


def frustum_holds(per_env: Sequence[str]) -> bool:
    """Whether the frustum test may use the drawn model's fields with these per-env fields: not if
    a geom's size, type or mesh varies per env but its bounding radius does not, nor if a camera's
    projection or intrinsics do."""
    if any(f in per_env for f in _CAMERA_FIELDS):
        return False
    return "geom_rbound" in per_env or not any(f in per_env for f in _EXTENT_FIELDS)


def world_fixed_opaque_geoms(model: mujoco.MjModel) -> np.ndarray:
    """(G,) bool: geoms welded to the world body (not mocap), drawn opaque (alpha 1)."""
    fixed = model.body_weldid[model.geom_bodyid] == 0
    alpha = model.geom_rgba[:, 3].copy()
    has_mat = model.geom_matid >= 0
    alpha[has_mat] = np.minimum(alpha[has_mat], model.mat_rgba[model.geom_matid[has_mat], 3])
    return fixed & (alpha == 1)


def world_fixed_cameras(model: mujoco.MjModel, cam_ids: Sequence[int]) -> np.ndarray:
    """(C,) bool: cameras in fixed mode on a body welded to the world."""
    fixed_mode = int(mujoco.mjtCamLight.mjCAMLIGHT_FIXED)
    return np.array(
        [
            model.cam_mode[i] == fixed_mode and model.body_weldid[model.cam_bodyid[i]] == 0
            for i in cam_ids
        ],
        dtype=bool,
    )


def segmented_geoms(rgb: np.ndarray, scene: mujoco.MjvScene, ngeom: int) -> np.ndarray:
    """(ngeom,) bool: model geoms that own a pixel of `rgb`, a segmentation render of `scene`
    (flags mjRND_SEGMENT and mjRND_IDCOLOR: colour r + 256 g + 65536 b = scene geom index + 1)."""
    rgb = rgb.astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    seen = np.zeros(ngeom, bool)
    geom = int(mujoco.mjtObj.mjOBJ_GEOM)
    for i in np.unique(ids[ids > 0]) - 1:
        g = scene.geoms[int(i)]
        if g.objtype == geom:
            seen[g.objid] = True
    return seen


def occlusion_holds(
    per_env: Mapping[str, np.ndarray], geom_alpha: np.ndarray, mat_alpha: np.ndarray
) -> bool:
    """Whether a static-occlusion result stays valid with these per-env field values: only
    shading may vary, and colours only with the alpha (`geom_alpha`, `mat_alpha`) built."""
    for name, values in per_env.items():
        if name.startswith(_SHADING_PREFIXES) or name in _SHADING_FIELDS:
            continue
        if name == "geom_rgba" and np.array_equal(
            values[..., 3], np.broadcast_to(geom_alpha, values.shape[:-1])
        ):
            continue
        if name == "mat_rgba" and np.array_equal(
            values[..., 3], np.broadcast_to(mat_alpha, values.shape[:-1])
        ):
            continue
        return False
    return True
