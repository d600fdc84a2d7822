"""PA-RL for the VLAs (algo o2o, actor_update parl): chunk-level n-step targets against a loop,
one PA-RL update moving a tiny flow VLA and a tiny AR VLA toward the Q-improved chunks, and a
tiny flow VLA through the Trainer offline then online on a recorded Reach dataset with images,
resumed from a checkpoint."""

import dataclasses

import pytest
import torch

from embodied.algos import parl
from embodied.config import load_config
from embodied.data.record import RecordConfig, record
from embodied.data.replay import ReplayBuffer
from embodied.runner.trainer import TrainConfig, Trainer
from policies import make_policy
from policies.vla.autoregressive import ARVLAConfig
from policies.vla.backbone import VLMConfig
from policies.vla.flow import FlowVLAConfig

TINY_VLM = VLMConfig(cameras=("front",), image_size=(32, 32), patch_size=16, vision_hidden=32, vision_layers=1,
                     vision_intermediate=64, hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64,
                     max_text_tokens=12)
TINY = [
    "env.cameras=[front]", "env.render.width=32", "env.render.height=32",
    "policy.vlm.cameras=[front]", "policy.vlm.image_size=[32, 32]", "policy.vlm.patch_size=16",
    "policy.vlm.vision_hidden=32", "policy.vlm.vision_layers=1", "policy.vlm.vision_intermediate=64",
    "policy.vlm.hidden=32", "policy.vlm.layers=1", "policy.vlm.heads=2", "policy.vlm.kv_heads=1",
    "policy.vlm.intermediate=64", "policy.vlm.max_text_tokens=12", "policy.chunk_size=2",
    "policy.expert_hidden=32", "policy.expert_heads=2", "policy.expert_intermediate=64", "policy.num_steps=3",
]
STATE = ("observation.state", "observation.environment_state")


def test_chunk_targets_match_a_reference_loop():
    """n_step = T with chunk = T: the T-step reward sum, gamma^m (no bootstrap after a
    terminal), the bootstrap slot, and the T actions padded with the last one past an
    episode's end or the newest transition."""
    g = torch.Generator().manual_seed(0)
    steps, envs, chunk, gamma = 11, 2, 3, 0.9
    buffer = ReplayBuffer(16, envs, {"x": (1,)}, 2)
    rewards, actions = torch.rand(steps, envs, generator=g), torch.randn(steps, envs, 2, generator=g)
    terminated = torch.zeros(steps, envs, dtype=torch.bool)
    truncated = torch.zeros(steps, envs, dtype=torch.bool)
    terminated[3, 0] = terminated[8, 1] = True
    truncated[6, 0] = truncated[4, 1] = True
    for t in range(steps):
        buffer.add({"x": torch.full((envs, 1), float(t)), "task": ["reach", "touch"]}, actions[t], rewards[t],
                   terminated[t], truncated[t], {"x": torch.full((envs, 1), t + 0.5)})
    t_index = torch.arange(steps).repeat(envs)
    e_index = torch.arange(envs).repeat_interleave(steps)
    batch = buffer.gather(t_index, e_index, n_step=chunk, gamma=gamma, chunk=chunk)
    done = terminated | truncated
    for row, (t, env) in enumerate(zip(t_index.tolist(), e_index.tolist(), strict=True)):
        ret, discount, last, chunk_actions, pads = 0.0, 1.0, t, [], []
        for k in range(chunk):
            if t + k >= steps or (k > 0 and done[t + k - 1, env]):
                break
            ret += discount * rewards[t + k, env].item()
            discount *= gamma
            last = t + k
        if terminated[last, env]:
            discount = 0.0
        valid = last - t + 1  # the chunk's actions inside the episode and the data
        for k in range(chunk):
            chunk_actions.append(actions[min(t + k, t + valid - 1), env])
            pads.append(k >= valid)
        assert batch["n_step_reward"][row].item() == pytest.approx(ret, abs=1e-5)
        assert batch["discount"][row].item() == pytest.approx(discount, abs=1e-6)
        assert batch["next_obs"]["x"][row].item() == last + 0.5
        assert torch.equal(batch["action_chunk"][row], torch.stack(chunk_actions))
        assert batch["action_is_pad"][row].tolist() == pads
        assert batch["obs"]["task"][row] == batch["next_obs"]["task"][row] == ["reach", "touch"][env]


def tiny_obs(n: int, generator: torch.Generator) -> dict:
    return {"observation.images.front": torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=generator),
            "observation.state": torch.randn(n, 5, generator=generator),
            "observation.environment_state": torch.randn(n, 3, generator=generator),
            "task": ["reach the green target"] * n}


@pytest.mark.parametrize("kind", ["flow_vla", "ar_vla"])
def test_one_parl_update_moves_a_vla_toward_the_q_improved_chunks(kind):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    obs = tiny_obs(8, g)
    config = (FlowVLAConfig(vlm=TINY_VLM, chunk_size=2, expert_hidden=32, expert_heads=2, expert_intermediate=64,
                            num_steps=3, state_keys=STATE) if kind == "flow_vla"
              else ARVLAConfig(vlm=TINY_VLM, chunk_size=2, state_keys=STATE))
    policy = make_policy(config, obs, action_dim=3)
    chunks = policy.sample_chunks(obs, 6)
    assert chunks.shape == (8, 6, 2, 3) and chunks.abs().max() <= 1
    target = torch.linspace(-0.5, 0.5, 6)  # Q is highest at one fixed flattened chunk

    def q_function(features, action):
        q = -(action - target).pow(2).sum(1)
        return torch.stack([q, q + 0.1])

    features = torch.zeros(8, 4)
    chosen, stats = parl.improve_actions(q_function, features, chunks.flatten(2), keep=2, steps=3, step_size=0.1)
    assert stats["q_improved"] > stats["q_sampled_best"]
    chosen = chosen.view(8, 2, 3)

    def loss() -> float:
        torch.manual_seed(1)  # the flow loss draws times and noise
        with torch.no_grad():
            return float(policy.supervised_loss(obs, chosen)[0])

    before = loss()
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    distil, _ = policy.supervised_loss(obs, chosen)
    distil.backward()
    optimizer.step()
    assert loss() < before


@pytest.fixture(scope="module")
def mixed_reach_images(tmp_path_factory):
    """Expert and noisy Reach demos with 32x32 front images, failures kept."""
    root = tmp_path_factory.mktemp("parl") / "reach_mixed"
    record(RecordConfig(task="Reach", episodes=4, root=str(root), num_envs=4, cameras=("front",), image_size=32,
                        video=False, noise=0.5, keep_failures=True), progress=False)
    return root


def parl_config(dataset, run_dir, actor: str = "parl", total: int = 96) -> TrainConfig:
    return load_config(TrainConfig, None, [
        f"run_dir={run_dir}", f"total_env_steps={total}", "torch_threads=1",
        "env.task=Reach", "env.num_envs=4", "env.obs_mode=rgb", "env.reward_mode=sparse",
        "policy.kind=flow_vla", "policy.state_keys=[observation.state, observation.environment_state]", *TINY,
        "algo.name=o2o", "algo.method=calql", "algo.online_mode=wsrl", f"algo.dataset={dataset}",
        "algo.offline_updates=4", "algo.updates_per_iteration=2", "algo.batch_size=8", "algo.buffer_steps=64",
        "algo.critic_hidden_sizes=[32, 32]", "algo.steps_per_iteration=8", "algo.updates_per_step=0.25",
        "algo.wsrl_warmup_steps=8", "algo.cql_samples=2", f"algo.actor_update={actor}", "algo.parl_samples=4",
        "algo.parl_keep=2", "algo.parl_steps=2",
        "eval.every=0", "eval.episodes=4", "checkpoint.every=3", "log.tensorboard=false", "log.progress_bar=false",
        "log.final_video=false",
    ])


def test_parl_fine_tunes_a_flow_vla_offline_then_online_and_resumes(tmp_path, mixed_reach_images):
    trainer = Trainer(parl_config(mixed_reach_images, tmp_path / "run"))
    algo = trainer.algo
    assert algo.n_step == 2 and algo.action_dim == 2 * trainer.env.action_dim
    assert algo.critic_keys == STATE and "observation.images.front" in algo.offline.obs
    assert algo.offline.obs["observation.images.front"].dtype == torch.uint8
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    trainer.train(stop_after=4)  # 2 offline iterations, then 2 online of 8 steps x 4 envs
    assert algo.updates == 4 + 2 and trainer.env_steps == 64 and len(algo.buffer) == 64
    assert algo.buffer.task_names and all(name for name in algo.buffer.task_names)
    assert any(not torch.equal(before[k], v) for k, v in trainer.policy.state_dict().items()), "PA-RL moved the VLA"
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert sum('"train/offline": 1.0' in line for line in lines) == 1 and any("q_improved" in line for line in lines)

    resumed = Trainer.from_run_dir(tmp_path / "run")  # the checkpoint of iteration 3
    assert resumed.iteration == 3 and resumed.algo.updates == 4 and len(resumed.algo.buffer) == 32  # warm-up: no update
    assert resumed.algo.buffer.task_names == algo.buffer.task_names[: len(resumed.algo.buffer.task_names)]
    result = resumed.train()
    assert resumed.env_steps == 96 and 0.0 <= result["success_rate"] <= 1.0
    assert resumed.algo.updates == 4 + 2 + 2 and len(resumed.algo.buffer) == 96


def test_a_vla_with_the_native_actor_update_is_refused(tmp_path, mixed_reach_images):
    cfg = parl_config(mixed_reach_images, tmp_path / "run", actor="native")
    with pytest.raises(ValueError, match="actor_update=parl"):
        Trainer(cfg)
    with pytest.raises(ValueError, match="algo.method=calql"):
        Trainer(dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, method="iql", actor_update="parl")))
    with pytest.raises(ValueError, match="bc_updates=0"):
        Trainer(dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, actor_update="parl", bc_updates=10)))


def test_the_distillation_anchor_and_the_proposals_around_the_mode(tmp_path, mixed_reach_images):
    """An anchor dataset adds its supervised loss to PA-RL's (logged as anchor_loss); with
    parl_include_mode and temperature 0 every proposal is the policy's deterministic chunk."""
    cfg = parl_config(mixed_reach_images, tmp_path / "run")
    cfg = dataclasses.replace(cfg, algo=dataclasses.replace(
        cfg.algo, distil_anchor_dataset=str(mixed_reach_images), parl_include_mode=True, parl_temperature=0.0))
    trainer = Trainer(cfg)
    proposals = trainer.policy.propose_chunks(trainer.obs, 4, temperature=0.0, include_mode=True)
    assert proposals.shape[1] == 4 and torch.allclose(proposals, proposals[:, :1].expand_as(proposals))
    stats = trainer.algo.update({}, 0)
    assert stats["anchor_loss"] > 0 and "q_improved" in stats


def test_parl_act_makes_the_agent_act_through_its_critic(tmp_path, mixed_reach_images):
    """With algo.parl_act the agent (collection and evaluation) executes the best refined of
    the policy's proposals by the chunk-level Q, the way PA-RL acts; the policy it wraps keeps
    training."""
    cfg = parl_config(mixed_reach_images, tmp_path / "run")
    cfg = dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, parl_act=True, parl_step_size=0.1))
    trainer = Trainer(cfg)
    algo, agent = trainer.algo, trainer.algo.acting_policy
    assert agent is not trainer.policy and agent.base is trainer.policy
    assert all(p.requires_grad for p in trainer.policy.parameters()), "the wrapped policy is not frozen"
    obs = trainer.obs
    torch.manual_seed(3)
    acted = agent.act(obs).action
    torch.manual_seed(3)
    proposals = trainer.policy.propose_chunks(obs, 4, 1.0, False).flatten(2).clamp(-1, 1)
    features = algo.critic_features(obs)
    expected, _ = parl.improve_actions(algo.critic, features, proposals, keep=2, steps=2, step_size=0.1)
    assert torch.allclose(acted.flatten(1), expected, atol=1e-6)
    with torch.no_grad():
        q_acted = algo.critic(features, acted.flatten(1)).min(0).values
        q_proposals = parl.pessimistic_q(algo.critic, features, proposals)
    assert (q_acted >= q_proposals.max(1).values - 1e-6).all(), "the agent acts no worse than its best proposal by Q"
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    result = trainer.train(stop_after=4)
    assert algo.runner.policy is agent and 0.0 <= result.get("success_rate", 0.0) <= 1.0
    assert any(not torch.equal(before[k], v) for k, v in trainer.policy.state_dict().items())
    with pytest.raises(ValueError, match="actor_update=parl"):
        Trainer(dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, actor_update="native")))
