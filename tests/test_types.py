"""The code type-checks: mypy over the packages and the benchmarks with pyproject's [tool.mypy]
config. This is what checks the paths that cannot all run on a CPU machine (the ManiSkill
backend without a Vulkan device, FSDP, the ROS 2 node) against the libraries' own types."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_code_type_checks():
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"mypy found type errors:\n{result.stdout[-8000:]}{result.stderr[-2000:]}"
    assert "Success: no issues found" in result.stdout
