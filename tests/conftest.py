import os
import tempfile

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="embodied-tests-hf-"))  # lerobot writes a cache when loading
