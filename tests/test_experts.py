"""Every task is solvable: its scripted expert succeeds from >= 95% of its initial states."""

import pytest

import sims
from embodied.demo import evaluate_expert

EPISODES = 100


@pytest.mark.parametrize("task", sims.list_tasks())
def test_expert_solves_task(task):
    result = evaluate_expert(task, episodes=EPISODES, seed=0)
    assert result.success_rate >= 0.95, f"{task}: {result.successes}/{EPISODES}"


@pytest.mark.parametrize("task", sims.list_tasks())
def test_expert_solves_task_under_domain_randomization(task):
    result = evaluate_expert(task, episodes=EPISODES, seed=1, randomize=True)
    assert result.success_rate >= 0.95, f"{task}: {result.successes}/{EPISODES}"


def test_expert_rejects_other_controllers():
    env = sims.make("Reach", num_envs=1, controller="joint_delta")
    with pytest.raises(ValueError, match="ee_delta"):
        env.task.expert()
