"""The MuJoCo Warp backend (extra ``warp``): the CPU backend's tasks on `mujoco_warp` worlds."""
