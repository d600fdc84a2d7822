import os
import tempfile

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="embodied-tests-hf-"))  # lerobot writes a cache when loading

SLOW_TIMEOUT_S = 4 * 3600  # the slow recipes train for up to ~45 min on 2 shared cores (README)


def pytest_collection_modifyitems(config, items):
    """pyproject's 900 s timeout guards the default run; a `slow` end-to-end recipe gets hours."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))
