"""LeRobot policies through our Policy interface: tiny ACT and diffusion policies built with
lerobot's own config classes, saved with lerobot's own save_pretrained (the `pretrained_model`
layout), loaded through the adapter and compared with lerobot's own inference."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket

import pytest
import torch

import sims
from embodied.evaluate import evaluate_policy
from policies import make_policy
from policies.base import Policy
from policies.lerobot_adapter import LeRobotPolicy, LeRobotPolicyConfig, load_lerobot_policy
from sims.core import EnvConfig, RenderSettings

pytest.importorskip("lerobot")
from lerobot.configs.policies import PreTrainedConfig  # noqa: E402
from lerobot.configs.types import FeatureType, PolicyFeature  # noqa: E402
from lerobot.policies.act.configuration_act import ACTConfig  # noqa: E402
from lerobot.policies.act.modeling_act import ACTPolicy  # noqa: E402
from lerobot.policies.factory import get_policy_class, make_pre_post_processors  # noqa: E402

STATE_ENV = EnvConfig(task="Reach", num_envs=3, obs_mode="state")
IMAGE_ENV = EnvConfig(task="PickCube", num_envs=2, obs_mode="rgb", cameras=("front",), render=RenderSettings(width=32, height=32))


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Nothing here may reach a hub (or torchvision's weight server)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a LeRobot adapter test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def env_obs(env_cfg: EnvConfig, seed: int = 0) -> dict:
    env = sims.make(env_cfg)
    obs = env.reset(seed=seed)
    env.close()
    return obs


def statistics(features: dict[str, PolicyFeature], action_dim: int) -> dict[str, dict[str, torch.Tensor]]:
    """Dataset statistics as lerobot stores them (per-channel for images; diffusion uses min/max)."""
    generator = torch.Generator().manual_seed(0)
    stats = {}
    for name, feature in features.items():
        if feature.type is FeatureType.VISUAL:
            stats[name] = {"mean": torch.full((3, 1, 1), 0.4), "std": torch.full((3, 1, 1), 0.2)}
        else:
            dim = feature.shape[0]
            mean, std = 0.1 * torch.randn(dim, generator=generator), 0.5 + torch.rand(dim, generator=generator)
            stats[name] = {"mean": mean, "std": std, "min": mean - 2 * std, "max": mean + 2 * std}
    stats["action"] = {
        "mean": torch.zeros(action_dim), "std": torch.full((action_dim,), 0.3),
        "min": -torch.ones(action_dim), "max": torch.ones(action_dim),
    }
    return stats


def save_lerobot_folder(lerobot_policy, stats, directory, backbone_weights: str | None = None) -> None:
    """Exactly what lerobot-train writes as `pretrained_model`: policy + both processor pipelines."""
    torch.manual_seed(1)
    with torch.no_grad():  # random, non-trivial weights
        for parameter in lerobot_policy.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    preprocessor, postprocessor = make_pre_post_processors(lerobot_policy.config, dataset_stats=stats)
    if backbone_weights is not None:  # as in real checkpoints: the config names torchvision weights
        lerobot_policy.config.pretrained_backbone_weights = backbone_weights
    lerobot_policy.save_pretrained(directory)
    preprocessor.save_pretrained(directory)
    postprocessor.save_pretrained(directory)


def vector_features(obs: dict) -> dict[str, PolicyFeature]:
    return {
        "observation.state": PolicyFeature(FeatureType.STATE, (obs["observation.state"].shape[1],)),
        "observation.environment_state": PolicyFeature(FeatureType.ENV, (obs["observation.environment_state"].shape[1],)),
    }


def tiny_act(input_features: dict[str, PolicyFeature], action_dim: int) -> ACTConfig:
    return ACTConfig(
        input_features=input_features, output_features={"action": PolicyFeature(FeatureType.ACTION, (action_dim,))},
        device="cpu", chunk_size=8, n_action_steps=4, dim_model=32, n_heads=2, dim_feedforward=64,
        n_encoder_layers=1, n_decoder_layers=1, n_vae_encoder_layers=1, latent_dim=8, pretrained_backbone_weights=None,
    )


@pytest.fixture(scope="module")
def act_state_folder(tmp_path_factory):
    """ACT on observation.state + observation.environment_state (no camera), Reach's sizes."""
    obs, action_dim = env_obs(STATE_ENV), 7
    config = tiny_act(vector_features(obs), action_dim)
    directory = tmp_path_factory.mktemp("act_state") / "pretrained_model"
    save_lerobot_folder(ACTPolicy(config), statistics(config.input_features, action_dim), directory)
    return directory


@pytest.fixture(scope="module")
def act_image_folder(tmp_path_factory):
    """ACT on a 32x32 camera named 'top' (our 'front') + state; its config names ImageNet weights."""
    features = {
        "observation.images.top": PolicyFeature(FeatureType.VISUAL, (3, 32, 32)),
        "observation.state": PolicyFeature(FeatureType.STATE, (25,)),
    }
    config = tiny_act(features, 7)
    directory = tmp_path_factory.mktemp("act_image") / "pretrained_model"
    save_lerobot_folder(ACTPolicy(config), statistics(features, 7), directory, backbone_weights="ResNet18_Weights.IMAGENET1K_V1")
    return directory


@pytest.fixture(scope="module")
def diffusion_folder(tmp_path_factory):
    """A tiny diffusion policy (state only, 2 observation steps, 10 DDPM steps)."""
    pytest.importorskip("diffusers")
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    obs, action_dim = env_obs(STATE_ENV), 7
    config = DiffusionConfig(
        input_features=vector_features(obs), output_features={"action": PolicyFeature(FeatureType.ACTION, (action_dim,))},
        device="cpu", n_obs_steps=2, horizon=8, n_action_steps=4, drop_n_last_frames=3, down_dims=(16, 32),
        kernel_size=3, n_groups=4, diffusion_step_embed_dim=16, num_train_timesteps=10, pretrained_backbone_weights=None,
    )
    directory = tmp_path_factory.mktemp("diffusion") / "pretrained_model"
    save_lerobot_folder(DiffusionPolicy(config), statistics(config.input_features, action_dim), directory)
    return directory


def lerobot_reference(directory, batch: dict, steps: int, seed: int = 0) -> torch.Tensor:
    """lerobot's own rollout of one chunk: its processors around `select_action`, `steps` times
    on the same observation (the first decision of an episode). (N, steps, A)."""
    config = PreTrainedConfig.from_pretrained(directory)
    config.pretrained_backbone_weights = None
    policy = get_policy_class(config.type).from_pretrained(directory, config=config)
    preprocessor, postprocessor = make_pre_post_processors(config, pretrained_path=str(directory))
    policy.reset()
    torch.manual_seed(seed)
    return torch.stack([postprocessor(policy.select_action(preprocessor(dict(batch)))) for _ in range(steps)], dim=1)


def test_act_state_matches_lerobot_and_runs_in_env(act_state_folder):
    policy = load_lerobot_policy(act_state_folder, clip_actions=False)
    assert policy.config.action_dim == 7 and policy.chunk_size == 4
    env = sims.make(STATE_ENV)
    obs = env.reset(seed=0)
    for _ in range(3):
        out = policy.act(obs)
        assert out.action.shape == (3, 4, 7) and out.action.dtype == torch.float32
        assert torch.isfinite(out.action).all() and out.value is None
        assert torch.equal(out.log_prob, torch.zeros(3))
        batch = {key: obs[key] for key in ("observation.state", "observation.environment_state")}
        expected = lerobot_reference(act_state_folder, {**batch, "task": obs["task"]}, steps=4)
        torch.testing.assert_close(out.action, expected, atol=1e-5, rtol=0)
        for t in range(out.action.shape[1]):
            obs, *_ = env.step(out.action[:, t])
    env.close()
    clipped = load_lerobot_policy(act_state_folder).act(obs).action
    assert clipped.abs().max() <= 1.0
    torch.testing.assert_close(clipped, policy.act(obs).action.clamp(-1, 1))


def test_act_image_with_renamed_camera_matches_lerobot(act_image_folder):
    """Camera 'top' of the checkpoint reads our 'front'; uint8 HWC -> float CHW in [0, 1]; the
    config's torchvision backbone weights are not downloaded (the socket would refuse)."""
    obs = env_obs(IMAGE_ENV)
    policy = load_lerobot_policy(act_image_folder, observation_map={"observation.images.top": "observation.images.front"}, clip_actions=False)
    spec = policy.feature_spec()
    assert spec.images == {"observation.images.front": (32, 32)}
    assert spec.vectors == ("observation.state",) and spec.vector_dim == 25 and spec.chunk_size == 4
    image = obs["observation.images.front"].permute(0, 3, 1, 2).float() / 255.0
    batch = {"observation.images.top": image, "observation.state": obs["observation.state"], "task": obs["task"]}
    expected = lerobot_reference(act_image_folder, batch, steps=4)
    torch.testing.assert_close(policy.act(obs).action, expected, atol=1e-5, rtol=0)
    unmapped = load_lerobot_policy(act_image_folder)
    with pytest.raises(KeyError, match="observation.images.top"):
        unmapped.act(obs)
    small = {**obs, "observation.images.front": obs["observation.images.front"][:, :16, :16]}
    with pytest.raises(ValueError, match=r"\(16, 16\).*\(32, 32\)"):
        policy.act(small)


def test_diffusion_matches_lerobot_first_chunk(diffusion_folder):
    """Diffusion samples: with the same seed, our chunk equals lerobot's select_action rollout of
    an episode's first 4 steps (the observation repeated over its 2 history steps)."""
    with pytest.warns(UserWarning, match="2 observation steps"):
        policy = load_lerobot_policy(diffusion_folder, clip_actions=False)
    obs = env_obs(STATE_ENV)
    torch.manual_seed(0)
    action = policy.act(obs).action
    assert action.shape == (3, 4, 7) and torch.isfinite(action).all()
    batch = {key: obs[key] for key in ("observation.state", "observation.environment_state")}
    expected = lerobot_reference(diffusion_folder, {**batch, "task": obs["task"]}, steps=4, seed=0)
    torch.testing.assert_close(action, expected, atol=1e-5, rtol=0)


def test_evaluate_policy_runs(act_state_folder):
    policy = load_lerobot_policy(act_state_folder)
    result = evaluate_policy(policy, dataclasses.replace(STATE_ENV, max_episode_steps=12), episodes=2, seed=1_000_000)
    assert result["episodes"] == 2 and 0.0 <= result["success_rate"] <= 1.0


def test_a_raw_lerobot_folder_loads_wherever_a_policy_folder_does(act_state_folder):
    """Policy.from_pretrained (and so embodied eval / deploy / serve) routes a LeRobot
    pretrained_model folder, which has a "type" and no "kind", through the adapter."""
    from policies.base import Policy
    from real_robot.policy_runtime import load_policy

    obs = env_obs(STATE_ENV)
    expected = load_lerobot_policy(act_state_folder).act(obs, deterministic=True).action
    for policy in (Policy.from_pretrained(act_state_folder), load_policy(act_state_folder)):
        assert isinstance(policy, LeRobotPolicy)
        torch.testing.assert_close(policy.act(obs, deterministic=True).action, expected)
    assert Policy.from_pretrained(act_state_folder, {"chunk_size": 2}).chunk_size == 2


def test_frozen_no_log_prob(act_state_folder):
    policy = load_lerobot_policy(act_state_folder)
    assert not any(p.requires_grad for p in policy.parameters())
    obs = env_obs(STATE_ENV)
    out = policy.act(obs)
    with pytest.raises(NotImplementedError, match="no tractable log-probability"):
        policy.evaluate(obs, out.action, out.extras)
    with pytest.raises(NotImplementedError, match="processor"):
        policy.set_normalization({})


def test_save_and_load_round_trip(act_image_folder, tmp_path):
    obs = env_obs(IMAGE_ENV)
    source = tmp_path / "copy"
    shutil.copytree(act_image_folder, source)
    policy = load_lerobot_policy(source, observation_map={"observation.images.top": "observation.images.front"})
    policy.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["kind"] == "lerobot"
    assert not (tmp_path / "ours" / "lerobot" / "model.safetensors").exists()  # weights once, at the top
    shutil.rmtree(source)
    reloaded = Policy.from_pretrained(tmp_path / "ours")  # needs nothing of the original folder
    assert isinstance(reloaded, LeRobotPolicy)
    torch.testing.assert_close(reloaded.act(obs).action, policy.act(obs).action, atol=0, rtol=0)
    direct = LeRobotPolicy.from_pretrained(act_image_folder)  # a lerobot folder as it is
    assert direct.config.path == str(act_image_folder)


def test_make_policy_and_action_dim_check(act_state_folder):
    obs = env_obs(STATE_ENV)
    policy = make_policy(LeRobotPolicyConfig(path=str(act_state_folder)), obs, 7)
    assert policy.act(obs).action.shape == (3, 4, 7)
    with pytest.raises(ValueError, match="action_dim is 6.*emits 7-dim"):
        make_policy(LeRobotPolicyConfig(path=str(act_state_folder)), obs, 6)
    with pytest.raises(ValueError, match="n_action_steps"):
        load_lerobot_policy(act_state_folder, chunk_size=5)
    with pytest.raises(ValueError, match="does not read"):
        load_lerobot_policy(act_state_folder, observation_map={"observation.images.top": "observation.images.front"})


@pytest.mark.parametrize(
    "missing",
    [
        "config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json",
        "policy_preprocessor_step_3_normalizer_processor.safetensors",
        "policy_postprocessor_step_0_unnormalizer_processor.safetensors",
    ],
)
def test_missing_file_is_named(act_state_folder, tmp_path, missing):
    folder = tmp_path / "pretrained_model"
    shutil.copytree(act_state_folder, folder)
    (folder / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing.replace(".", r"\.")):
        load_lerobot_policy(folder)


def test_hub_ids_are_not_fetched():
    with pytest.raises(FileNotFoundError, match="nothing is fetched from a hub"):
        load_lerobot_policy("lerobot/act_aloha_sim_transfer_cube_human")
    with pytest.raises(ValueError, match="path must name"):
        LeRobotPolicy(LeRobotPolicyConfig())


def test_config_reads_from_yaml_mapping():
    """A YAML `policy:` section picks the adapter by kind, with a camera mapping."""
    from embodied.config import from_dict
    from policies.base import PolicyConfig

    raw = {"kind": "lerobot", "path": "ckpt/pretrained_model", "observation_map": {"observation.images.top": "observation.images.front"}}
    config = from_dict(PolicyConfig.variants()["lerobot"], raw)
    assert isinstance(config, LeRobotPolicyConfig) and config.observation_map["observation.images.top"] == "observation.images.front"
