"""The README's SFT-to-RL recipes on Reach (slow: ~5-35 minutes each on 2 cores): a short RL
run from the few-shot SFT checkpoint improves held-out success, for both VLA families and
both algorithms. Results stay out of the shared results file."""

import json

import pytest

from embodied.cli import main


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [
    "lift_reach_flow_vla_grpo", "lift_reach_flow_vla_ppo", "lift_reach_ar_vla_grpo", "lift_reach_ar_vla_ppo",
])
def test_rl_from_few_shot_sft_improves_reach(tmp_path, recipe):
    out = tmp_path / recipe
    assert main(["lift", f"configs/{recipe}.yaml", f"out={out}", "results_file="]) == 0
    summary = json.loads((out / "lift.json").read_text())
    assert summary["S1"] > summary["S0"], summary
