"""Residual off-policy RL: the residual starts as the base, the ensemble target takes the min
of a random pair, save/load keeps the base, and a short TD3/SAC run through the Trainer."""

import dataclasses

import pytest
import torch

import sims
from embodied.algos.offpolicy import QEnsemble, pair_min
from embodied.algos.residual import BASE_ACTION, PHASE, Residual, ResidualConfig, add_base_actions
from embodied.config import load_config
from embodied.data.replay import ReplayBuffer
from embodied.evaluate import evaluate_policy
from embodied.runner.rollout import EpisodeTracker
from embodied.runner.trainer import TrainConfig, Trainer
from policies import MLPPolicyConfig, make_policy
from policies.base import Policy
from policies.residual import ResidualPolicy, ResidualPolicyConfig
from policies.vgps import load_run_critic
from sims.core import EnvConfig


@pytest.fixture(scope="module")
def reach():
    env = sims.make("Reach", num_envs=8, obs_mode="state", seed=0)
    return env, env.reset(seed=0)


def saved_base(tmp_path, env, obs, chunk_size=1):
    torch.manual_seed(0)
    base = make_policy(MLPPolicyConfig(chunk_size=chunk_size), obs, env.action_dim)
    with torch.no_grad():  # a base that does something: non-zero mean actions
        base.actor[-1].weight.normal_(0, 0.3)
        base.actor[-1].bias.uniform_(-0.5, 0.5)
    base.observe(obs)
    base.save_pretrained(tmp_path / "base")
    return base


@pytest.mark.parametrize("chunk_size", [1, 4])
@pytest.mark.parametrize("stochastic", [False, True])
def test_residual_is_the_identity_at_step_zero(tmp_path, reach, chunk_size, stochastic):
    env, obs = reach
    base = saved_base(tmp_path, env, obs, chunk_size)
    policy = make_policy(ResidualPolicyConfig(base_path=str(tmp_path / "base"), stochastic=stochastic), obs, env.action_dim)
    expected = base.act(obs, deterministic=True).action[:, 0].clamp(-1, 1)
    assert expected.abs().max() > 0.1
    assert torch.equal(policy.act(obs, deterministic=True).action[:, 0], expected)
    if stochastic:  # tanh(0 + noise) with the zero last layer: noise only from the log std (0 -> std 1), scaled
        assert (policy.act(obs).action[:, 0] - expected).abs().max() <= policy.config.scale + 1e-6
    # only the residual actor trains; the base is frozen
    assert all(not p.requires_grad for p in policy.base.parameters())
    assert {n.split(".")[0] for n, p in policy.named_parameters() if p.requires_grad} == {"actor"}


def test_residual_saves_with_its_base_and_reloads(tmp_path, reach):
    env, obs = reach
    saved_base(tmp_path, env, obs)
    policy = make_policy(ResidualPolicyConfig(base_path=str(tmp_path / "base")), obs, env.action_dim)
    with torch.no_grad():
        policy.actor[-1].weight.normal_()
    policy.save_pretrained(tmp_path / "residual")
    (tmp_path / "base" / "model.safetensors").unlink()  # the folder must not depend on base_path any more
    loaded = Policy.from_pretrained(tmp_path / "residual")
    assert isinstance(loaded, ResidualPolicy)
    assert torch.equal(loaded.act(obs, deterministic=True).action, policy.act(obs, deterministic=True).action)


def test_pair_min_takes_two_distinct_members_at_random():
    q = torch.arange(1.0, 5.0)[:, None].expand(4, 3)  # member e outputs e + 1
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([pair_min(q, g)[0] for _ in range(1200)])
    assert set(draws.tolist()) == {1.0, 2.0, 3.0}, "the max member is never the min of a distinct pair"
    frequencies = torch.stack([(draws == v).float().mean() for v in (1.0, 2.0, 3.0)])
    assert torch.allclose(frequencies, torch.tensor([1 / 2, 1 / 3, 1 / 6]), atol=0.05)
    two = torch.tensor([[1.0, 5.0], [2.0, 0.0]])
    assert torch.equal(pair_min(two, g), torch.tensor([1.0, 0.0])), "E = 2: clipped double Q"


class ConstantEnsemble(torch.nn.Module):
    """Member e outputs e + 1 for every input."""

    def __init__(self, members):
        super().__init__()
        self.members = members

    def forward(self, features, action):
        return torch.arange(1.0, self.members + 1)[:, None].expand(self.members, features.shape[0])


def test_critic_target_is_the_n_step_return_plus_the_discounted_min_of_a_random_pair(tmp_path, reach):
    env, obs = reach
    saved_base(tmp_path, env, obs)
    policy = make_policy(ResidualPolicyConfig(base_path=str(tmp_path / "base")), obs, env.action_dim)
    algo = Residual(policy, ResidualConfig(num_critics=4))
    algo.target_critic = ConstantEnsemble(4)
    recorded = {BASE_ACTION: torch.zeros(4, env.action_dim), PHASE: torch.zeros(4, 1)}
    batch = {
        "obs": {k: obs[k][:4] for k in algo.obs_keys} | recorded,
        "next_obs": {k: obs[k][4:8] for k in algo.obs_keys} | recorded,
        "action": torch.zeros(4, env.action_dim), "n_step_reward": torch.tensor([0.0, 1.0, 0.5, 0.0]),
        "discount": torch.tensor([0.9, 0.0, 0.81, 0.9]),
    }
    targets = set()
    for _ in range(40):
        _, stats = algo.critic_loss(batch)
        target_q = stats["target_q"].item()
        # mean of r + d * m over the batch with m the pair's min, shared by the batch
        m = (target_q * 4 - batch["n_step_reward"].sum().item()) / batch["discount"].sum().item()
        assert min(abs(m - v) for v in (1.0, 2.0, 3.0)) < 1e-5
        targets.add(round(m))
    assert targets == {1, 2, 3}


def test_td3_and_sac_train_through_the_trainer_and_resume(tmp_path, reach):
    env, obs = reach
    saved_base(tmp_path, env, obs)
    for actor in ("td3", "sac"):
        cfg = load_config(TrainConfig, None, [
            f"run_dir={tmp_path / actor}", "total_env_steps=480", "torch_threads=1",
            "env.task=Reach", "env.num_envs=8", "env.obs_mode=state", "env.reward_mode=sparse",
            "policy.kind=residual", f"policy.base_path={tmp_path / 'base'}", f"policy.stochastic={actor == 'sac'}",
            "policy.hidden_sizes=[32, 32]",
            "algo.name=residual", f"algo.actor={actor}", "algo.steps_per_iteration=10", "algo.updates_per_step=2",
            "algo.warmup_steps=20", "algo.critic_warmup_updates=20", "algo.batch_size=32", "algo.buffer_steps=100",
            "algo.critic_hidden_sizes=[32, 32]", "algo.num_critics=3",
            "eval.every=0", "eval.episodes=8", "checkpoint.every=4",
        ])
        trainer = Trainer(cfg)
        result = trainer.train()
        assert trainer.env_steps == 480 and 0.0 <= result["success_rate"] <= 1.0
        algo: Residual = trainer.algo
        assert algo.updates == (60 - 10) * 2  # none before the iteration that completes the base warm-up
        assert algo.buffer is not None and len(algo.buffer) == 480
        assert policy_moved(trainer.policy), "the actor trained after the critic-only warm-up"
        resumed = Trainer.from_run_dir(tmp_path / actor)
        assert resumed.algo.updates == algo.updates and len(resumed.algo.buffer) == 480
        assert torch.equal(resumed.algo.critic.net[0].weight, algo.critic.net[0].weight)


def policy_moved(policy: ResidualPolicy) -> bool:
    return bool(policy.actor[-1].weight.abs().sum() > 0)


def test_residual_rejects_a_policy_it_cannot_train(reach):
    env, obs = reach
    mlp = make_policy(MLPPolicyConfig(), obs, env.action_dim)
    with pytest.raises(ValueError, match="residual"):
        Residual(mlp, ResidualConfig())
    with pytest.raises(ValueError, match="base_path"):
        make_policy(ResidualPolicyConfig(), obs, env.action_dim)


def test_q_ensemble_members_are_independent():
    critic = QEnsemble(5, 2, members=3, hidden_sizes=(16,))
    q = critic(torch.randn(7, 5), torch.randn(7, 2))
    assert q.shape == (3, 7) and not torch.allclose(q[0], q[1])
    assert any(isinstance(m, torch.nn.LayerNorm) for m in critic.modules())
    buffer = ReplayBuffer(4, 1, {"x": (1,)}, 1)
    assert dataclasses.is_dataclass(ResidualConfig) and len(buffer) == 0


# ------------------------------------------------------------------ a base that follows its chunks
def test_a_residual_following_its_bases_chunks_starts_as_the_base_run_open_loop(tmp_path, reach):
    env, obs = reach
    base = saved_base(tmp_path, env, obs, chunk_size=4)
    policy = make_policy(ResidualPolicyConfig(base_path=str(tmp_path / "base"), base_horizon=4), obs, env.action_dim)
    chunk = base.act(obs, deterministic=True).action.clamp(-1, 1)
    other = {k: v.flip(0) if isinstance(v, torch.Tensor) else v for k, v in obs.items()}
    steps = [policy.act(o, deterministic=True).action[:, 0] for o in (obs, other, other, other)]
    assert all(torch.equal(steps[t], chunk[:, t]) for t in range(4)), "the chunk runs open-loop, whatever is observed"
    fresh = policy.act(other, deterministic=True).action[:, 0]
    assert torch.equal(fresh, base.act(other, deterministic=True).action[:, 0].clamp(-1, 1)), "then a fresh chunk"
    policy.reset()
    assert torch.equal(policy.act(obs, deterministic=True).action[:, 0], chunk[:, 0]), "reset starts every env afresh"
    # in the evaluator, step for step the base's own open-loop chunks
    env_cfg = EnvConfig(task="Reach", obs_mode="state", max_episode_steps=30)
    assert evaluate_policy(policy, env_cfg, 12, seed=5) == evaluate_policy(base, env_cfg, 12, seed=5)
    with pytest.raises(ValueError, match="base_horizon"):
        make_policy(ResidualPolicyConfig(base_path=str(tmp_path / "base"), base_horizon=5), obs, env.action_dim)


def test_collection_records_the_base_action_and_its_phase_at_both_ends_of_each_transition(tmp_path):
    env = sims.make("Reach", num_envs=3, obs_mode="state", seed=0, max_episode_steps=5)
    obs = env.reset(seed=0)
    base = saved_base(tmp_path, env, obs, chunk_size=4)
    policy = make_policy(ResidualPolicyConfig(base_path=str(tmp_path / "base"), base_horizon=3), obs, env.action_dim)
    algo = Residual(policy, ResidualConfig(steps_per_iteration=14, warmup_steps=100, warmup_noise=0.0, buffer_steps=20))
    algo.collect(env, obs, EpisodeTracker(env.num_envs, env.device))
    buffer = algo.buffer
    for column in range(env.num_envs):
        step = 0
        for t in range(14):
            o = {k: buffer.obs[k][t, column][None] for k in algo.obs_keys}
            nxt = {k: buffer.next_obs[k][t, column][None] for k in algo.obs_keys}
            assert buffer.obs[PHASE][t, column, 0] == step % 3
            if step % 3 == 0:  # a fresh chunk of the base at this state
                assert torch.allclose(buffer.obs[BASE_ACTION][t, column], base.act(o, deterministic=True).action[0, 0].clamp(-1, 1),
                                      atol=1e-4)
            assert torch.equal(buffer.action[t, column], buffer.obs[BASE_ACTION][t, column]), "warm-up without noise: the base"
            if buffer.done[t, column]:  # the final state starts a fresh chunk of its own
                assert buffer.next_obs[PHASE][t, column, 0] == 0
                fresh = base.act(nxt, deterministic=True).action[0, 0].clamp(-1, 1)
                assert torch.allclose(buffer.next_obs[BASE_ACTION][t, column], fresh, atol=1e-4)
                step = 0
            else:
                if t < 13:  # the next state's is what the next transition acted on
                    assert torch.equal(buffer.next_obs[PHASE][t, column], buffer.obs[PHASE][t + 1, column])
                    assert torch.equal(buffer.next_obs[BASE_ACTION][t, column], buffer.obs[BASE_ACTION][t + 1, column])
                step += 1
    assert buffer.done[:14].any(), "episodes of 5 steps end inside the second chunk of 3"


def test_a_dataset_gets_the_base_actions_of_chunks_followed_from_each_episodes_start(tmp_path, reach):
    env, obs = reach
    base = saved_base(tmp_path, env, obs, chunk_size=4)
    policy = make_policy(ResidualPolicyConfig(base_path=str(tmp_path / "base"), base_horizon=3), obs, env.action_dim)
    lengths, keys = (7, 2, 5), ("observation.state", "observation.environment_state")
    buffer = ReplayBuffer(sum(lengths), 1, {k: tuple(obs[k].shape[1:]) for k in keys}, env.action_dim)
    torch.manual_seed(1)
    for length in lengths:
        for i in range(length):
            rows = {k: obs[k][:1] + torch.randn_like(obs[k][:1]) * 0.1 for k in keys}
            end = torch.tensor([i == length - 1])
            buffer.add(rows, torch.zeros(1, env.action_dim), torch.zeros(1), end, torch.zeros(1, dtype=torch.bool),
                       {k: v + 1.0 for k, v in rows.items()})
    add_base_actions(buffer, policy)
    t = 0
    for length in lengths:
        for i in range(length):
            start = t - i % 3
            start_obs = {k: buffer.obs[k][start, 0][None] for k in keys}
            expected = base.act(start_obs, deterministic=True).action[0, i % 3].clamp(-1, 1)
            assert buffer.obs[PHASE][t, 0, 0] == i % 3 and torch.allclose(buffer.obs[BASE_ACTION][t, 0], expected, atol=1e-4)
            if i == length - 1:
                nxt = {k: buffer.next_obs[k][t, 0][None] for k in keys}
                fresh = base.act(nxt, deterministic=True).action[0, 0].clamp(-1, 1)
                assert buffer.next_obs[PHASE][t, 0, 0] == 0 and torch.allclose(buffer.next_obs[BASE_ACTION][t, 0], fresh, atol=1e-4)
            else:
                assert torch.equal(buffer.next_obs[BASE_ACTION][t, 0], buffer.obs[BASE_ACTION][t + 1, 0])
            t += 1


def test_uncorrected_dimensions_keep_the_bases_action_under_noise_and_training(tmp_path, reach):
    env, obs = reach
    base = saved_base(tmp_path, env, obs)
    for stochastic in (False, True):
        policy = make_policy(ResidualPolicyConfig(base_path=str(tmp_path / "base"), uncorrected_dims=(3, 4, 5),
                                                  stochastic=stochastic, explore_std=0.3), obs, env.action_dim)
        with torch.no_grad():
            policy.actor[-1].weight.normal_()
        expected = base.act(obs, deterministic=True).action[:, 0].clamp(-1, 1)
        action = policy.act(obs).action[:, 0]
        assert torch.equal(action[:, 3:6], expected[:, 3:6])
        assert not torch.equal(action[:, :3], expected[:, :3])
        state = policy.state(obs, expected, torch.zeros(len(expected)))
        residual, log_prob = policy.residual(state, expected)
        assert torch.isfinite(log_prob).all() and (residual[:, 3:6] == 0).all()
    with pytest.raises(ValueError, match="uncorrected_dims"):
        make_policy(ResidualPolicyConfig(base_path=str(tmp_path / "base"), uncorrected_dims=(7,)), obs, env.action_dim)


def test_a_chunk_following_residual_trains_and_resumes_with_its_chunks_in_flight(tmp_path, reach):
    env, obs = reach
    saved_base(tmp_path, env, obs, chunk_size=4)
    overrides = [
        f"run_dir={tmp_path / 'run'}", "total_env_steps=400", "torch_threads=1",
        "env.task=Reach", "env.num_envs=8", "env.obs_mode=state", "env.reward_mode=sparse",
        "policy.kind=residual", f"policy.base_path={tmp_path / 'base'}", "policy.base_horizon=4",
        "policy.hidden_sizes=[32, 32]", "algo.name=residual", "algo.steps_per_iteration=5", "algo.updates_per_step=2",
        "algo.warmup_steps=10", "algo.critic_warmup_updates=10", "algo.batch_size=32", "algo.buffer_steps=100",
        "algo.critic_hidden_sizes=[32, 32]", "eval.every=0", "eval.episodes=8", "checkpoint.every=5",
    ]
    trainer = Trainer(load_config(TrainConfig, None, overrides))
    trainer.train()
    assert policy_moved(trainer.policy) and trainer.algo.buffer.obs[PHASE].max() == 3
    resumed = Trainer.from_run_dir(tmp_path / "run")
    assert torch.equal(resumed.algo.runner.index, trainer.algo.runner.index)
    assert torch.equal(resumed.algo.runner.queue, trainer.algo.runner.queue)
    with pytest.raises(ValueError, match="base_horizon"):  # its critic needs the phase: no V-GPS with it
        load_run_critic(tmp_path / "run")


def test_the_residual_penalty_pulls_the_correction_back_to_the_base(tmp_path, reach):
    env, obs = reach
    saved_base(tmp_path, env, obs)
    policy = make_policy(ResidualPolicyConfig(base_path=str(tmp_path / "base"), uncorrected_dims=(6,)), obs, env.action_dim)
    with torch.no_grad():
        policy.actor[-1].bias.fill_(0.5)  # a correction of 0.3 * tanh(0.5) everywhere
    keys = ("observation.state", "observation.environment_state")
    recorded = {BASE_ACTION: torch.zeros(8, env.action_dim), PHASE: torch.zeros(8, 1)}
    batch = {"obs": {k: obs[k] for k in keys} | recorded}
    algo = Residual(policy, ResidualConfig(residual_penalty=1.0))
    algo.critic = ConstantEnsemble(2)  # Q does not depend on the action: only the penalty has a gradient
    loss, stats = algo.actor_loss(batch)
    assert torch.isclose(stats["residual_size"], torch.tanh(torch.tensor(0.5)).pow(2), atol=1e-5)
    loss.backward()
    grad = policy.actor[-1].bias.grad
    assert (grad[:6] > 0).all() and grad[6] == 0, "descent shrinks every corrected dimension; the held one has none"


def test_the_deploy_runtime_starts_a_chunk_following_residual_afresh_each_episode(tmp_path, reach):
    from real_robot.policy_runtime import LocalPolicy

    env, obs = reach
    base = saved_base(tmp_path, env, obs, chunk_size=4)
    policy = make_policy(ResidualPolicyConfig(base_path=str(tmp_path / "base"), base_horizon=4), obs, env.action_dim)
    one = {k: v[:1] for k, v in obs.items() if isinstance(v, torch.Tensor)}
    policy.act(one, deterministic=True)  # an episode ends one step into its chunk
    LocalPolicy(policy).reset()
    expected = base.act(one, deterministic=True).action[:, 0].clamp(-1, 1)
    assert torch.equal(policy.act(one, deterministic=True).action[:, 0], expected), "the next episode's first action"


def test_the_readme_table_is_made_from_the_results_json():
    """`benchmarks.residual_o2o --table`: a row per entry, lift in points, the run directory
    kept out of the copyable command, the comparison an entry carries shown beside it."""
    from benchmarks.residual_o2o import results_table

    entry = {"start_success": 0.1, "end_success": 0.64, "env_steps": 100000, "train_wall_s": 1309.4}
    data = {"results": {
        "residual_td3/StackCube/seed0": entry | {"command": "uv run embodied train c.yaml (run runs/x)"},
        "o2o/PickCube/seed0": entry | {"scratch_end_success": 0.0, "command": "uv run embodied train o.yaml"},
    }}
    rows = results_table(data).splitlines()
    assert rows[2].startswith("| o2o/PickCube/seed0 | 10% | 64% | +54 | 100,000 | 1309 | from scratch 0% |")
    assert rows[3].endswith("| `uv run embodied train c.yaml` (run `runs/x`) |")


@pytest.mark.slow
def test_the_stackcube_recipe_lifts_a_base_that_does_not_let_go(tmp_path):
    """The README's StackCube residual row from the commands in its recipe's header: 300 DART
    demos -> a one-step BC base (~10%: it stacks but rarely opens the gripper in time) -> the
    gripper-only residual, 100k env steps (README: 64% and 72%, seeds 0 and 1)."""
    import json

    from embodied.cli import main

    data, base = tmp_path / "StackCube_dart05", tmp_path / "base"
    assert main(["record", "--task", "StackCube", "--episodes", "300", "--root", str(data), "--noise", "0.05",
                 "--label", "clean", "--cameras", "front", "--image-size", "32", "--no-video"]) == 0
    assert main(["train", "configs/sft_pickcube_mlp.yaml", "env.task=StackCube", f"algo.dataset={data}",
                 "torch_threads=1", f"run_dir={base}", "log.final_video=false", "log.tensorboard=false"]) == 0
    base_success = json.loads((base / "eval.json").read_text())["success_rate"]
    cfg = load_config(TrainConfig, "configs/residual_stackcube_mlp.yaml", [
        f"policy.base_path={base}", f"run_dir={tmp_path / 'residual'}", "eval.every=0", "checkpoint.every=0",
        "log.final_video=false", "log.tensorboard=false", "log.progress_bar=false"])
    assert Trainer(cfg).train()["success_rate"] >= base_success + 0.3
