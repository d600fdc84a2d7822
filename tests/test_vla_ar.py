"""Autoregressive VLA: OpenVLA's action tokens, log-probs that recompute, HF-layout save/load,
an OpenVLA-layout checkpoint written here, clear errors, nothing fetched from a hub."""

import json
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from tokenizers import processors
from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

import sims
from policies import make_policy
from policies.base import Policy
from policies.vla import openvla
from policies.vla.action_tokenizer import ActionTokenizer
from policies.vla.autoregressive import ARVLAConfig, ARVLAPolicy
from policies.vla.backbone import VLMConfig, task_instructions, train_tokenizer


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Nothing here may reach a hub: any connection attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a VLA test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def rgb_obs():
    env = sims.make("PickCube", num_envs=4, obs_mode="rgb", cameras=("front",))
    obs = env.reset(seed=0)
    env.close()
    return obs


def sharpened(policy: ARVLAPolicy, scale: float = 30.0) -> ARVLAPolicy:
    """Scale the action rows of the LM head so that the action distribution is far from
    uniform: log-prob mismatches then show, instead of hiding in near-equal logits."""
    with torch.no_grad():
        head = policy.backbone.language_model.get_output_embeddings().weight
        head[policy.action_tokenizer.begin : policy.action_tokenizer.end] *= scale
    return policy


# ---- action tokenizer ---------------------------------------------------------------------


def openvla_reference(action: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenVLA's ActionTokenizer, as written in prismatic/vla/action_tokenizer.py."""
    bins = np.linspace(-1, 1, 256)
    bin_centers = (bins[:-1] + bins[1:]) / 2.0
    token_ids = vocab_size - np.digitize(np.clip(action, -1.0, 1.0), bins)
    discretized = np.clip(vocab_size - token_ids - 1, a_min=0, a_max=bin_centers.shape[0] - 1)
    return token_ids, bin_centers[discretized]


def test_action_tokenizer_is_openvlas():
    tokenizer = ActionTokenizer(end=32000)
    edges = np.linspace(-1, 1, 256)
    actions = np.concatenate(
        [np.random.default_rng(0).uniform(-1.2, 1.2, 5000), edges, [-1.0, 0.0, 1.0, -1.5, 2.0]]
    )
    ids, centres = openvla_reference(actions, 32000)
    ours = tokenizer.encode(torch.from_numpy(actions))
    np.testing.assert_array_equal(ours.numpy(), ids)
    np.testing.assert_allclose(tokenizer.decode(ours).numpy(), centres, atol=1e-7)
    assert (
        ids.min() == 32000 - 256 and ids.max() == 32000 - 1
    )  # the last 256 ids, +1 -> smallest id
    assert (
        tokenizer.encode(torch.tensor(1.0)) == 32000 - 256
        and tokenizer.encode(torch.tensor(-1.0)) == 31999
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1.0, 1.0, allow_nan=False), min_size=1, max_size=32))
def test_action_tokens_round_trip_within_half_a_bin(values):
    tokenizer = ActionTokenizer(end=659)
    action = torch.tensor(values, dtype=torch.float64)
    tokens = tokenizer.encode(action)
    assert ((tokens >= tokenizer.begin) & (tokens < tokenizer.end)).all()
    error = (tokenizer.decode(tokens).double() - action).abs().max().item()
    assert error <= tokenizer.bin_width / 2 + 1e-6


# ---- the policy ---------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_recorded_log_prob_equals_recomputation(rgb_obs, temperature):
    torch.manual_seed(0)
    policy = sharpened(make_policy(ARVLAConfig(chunk_size=2, temperature=temperature), rgb_obs, 7))
    out = policy.act(rgb_obs)
    assert out.action.shape == (4, 2, 7) and out.log_prob.shape == (4,) and out.value.shape == (4,)
    assert out.extras["tokens"].shape == (4, 14) and out.extras["tokens"].dtype == torch.long
    assert out.extras["token_log_prob"].shape == (4, 14)
    assert out.log_prob.std() > 0.5  # a peaked distribution: the samples differ in probability
    log_prob, entropy, value = policy.evaluate(rgb_obs, out.action, out.extras)
    assert (log_prob - out.log_prob).abs().max() <= 1e-4
    assert (value - out.value).abs().max() <= 1e-5
    assert entropy.shape == (4,) and (entropy > 0).all()
    per_token, _, _ = policy.evaluate_elements(rgb_obs, out.action, out.extras)
    assert per_token.shape == (4, 2, 7)
    assert (per_token.flatten(1) - out.extras["token_log_prob"]).abs().max() <= 1e-4
    torch.testing.assert_close(
        policy.evaluate_at(rgb_obs, out.action, out.extras, "action")[0], per_token.sum(-1)
    )
    # Bin-centre actions re-tokenise to the sampled tokens (no extras needed).
    assert (policy.evaluate(rgb_obs, out.action, {})[0] - out.log_prob).abs().max() <= 1e-4


@pytest.mark.parametrize("decoding", ["argmax", "expected"])
def test_static_decoder_matches_the_lm_forward_with_a_cache(rgb_obs, decoding):
    obs = {k: v[:2] for k, v in rgb_obs.items()}
    policy = sharpened(
        make_policy(ARVLAConfig(chunk_size=2, decoding=decoding, vlm=VLMConfig(lm_arch="qwen2")), obs, 7)
    )
    assert policy.decoder == "static"
    outputs = {}
    for decoder in ("static", "hf"):
        policy.decoder = decoder
        torch.manual_seed(1)
        outputs[decoder] = (policy.act(obs, deterministic=True), policy.act(obs))
    for static, reference in zip(outputs["static"], outputs["hf"], strict=True):
        assert torch.equal(static.extras["tokens"], reference.extras["tokens"])
        assert (
            static.extras["token_log_prob"] - reference.extras["token_log_prob"]
        ).abs().max() <= 1e-4
        torch.testing.assert_close(static.value, reference.value)


def test_expected_decoding_picks_the_bin_nearest_the_mean(rgb_obs):
    """Two equal peaks at the ends of the range: argmax takes the first, the expected readout the
    middle bin. In a decoded chunk every token is the bin nearest the mean of its distribution
    given the tokens before it (recomputed by one teacher-forced pass), at the policy's temperature."""
    policy = sharpened(make_policy(ARVLAConfig(chunk_size=2, n_bins=32, decoding="expected", temperature=0.5),
                                   rgb_obs, 7), scale=3.0)
    two_peaks = torch.full((1, 32), -30.0)
    two_peaks[0, [1, 31]] = 0.0  # actions -1 + 1/31 and 1 - 1/31
    assert policy._choose(two_peaks, None).item() == 16 and policy.bin_values[16].abs() < 1e-6
    policy.config.decoding = "argmax"
    assert policy._choose(two_peaks, None).item() == 1
    policy.config.decoding = "expected"

    out = policy.act(rgb_obs, deterministic=True)
    logits, _ = policy.teacher_forced(rgb_obs, out.extras["tokens"])
    mean = torch.softmax(logits / 0.5, dim=-1) @ policy.bin_values  # (N, T*A)
    nearest = (mean[..., None] - policy.bin_values).abs().argmin(-1)
    assert torch.equal(policy.action_tokenizer.index(out.extras["tokens"]), nearest)
    assert not torch.equal(nearest, logits.argmax(-1))  # a readout that differs from greedy here
    torch.testing.assert_close(out.action.flatten(1), policy.bin_values[nearest])


def test_a_recipe_sets_how_a_saved_policy_decodes(tmp_path, rgb_obs):
    """load_policy (init_from, `embodied eval` overrides, a lift's S0) takes the architecture
    from the folder and the runtime fields (temperature, decoding) from the recipe."""
    from embodied.runner.trainer import load_policy

    policy = make_policy(ARVLAConfig(chunk_size=2, n_bins=32), rgb_obs, 7)
    policy.save_pretrained(tmp_path / "vla")
    loaded = load_policy(tmp_path / "vla", ARVLAConfig(chunk_size=4, n_bins=64, temperature=0.5, decoding="expected"))
    assert (loaded.config.chunk_size, loaded.config.n_bins) == (2, 32)
    assert (loaded.config.temperature, loaded.config.decoding) == (0.5, "expected")
    with pytest.raises(ValueError, match="decoding"):
        make_policy(ARVLAConfig(decoding="mean"), rgb_obs, 7)


def test_save_load_gives_identical_outputs(tmp_path, rgb_obs):
    policy = make_policy(ARVLAConfig(chunk_size=2), rgb_obs, 7)
    policy.set_state_stats(torch.linspace(-1, 1, 25), torch.linspace(0.5, 2, 25))
    policy.save_pretrained(tmp_path / "vla")
    assert {p.name for p in (tmp_path / "vla").iterdir()} == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    }
    loaded = Policy.from_pretrained(tmp_path / "vla")
    assert isinstance(loaded, ARVLAPolicy) and loaded.config == policy.config
    torch.testing.assert_close(loaded.state_mean, policy.state_mean)
    first, again = policy.act(rgb_obs, deterministic=True), loaded.act(rgb_obs, deterministic=True)
    assert torch.equal(first.extras["tokens"], again.extras["tokens"])
    torch.testing.assert_close(again.log_prob, first.log_prob)
    torch.testing.assert_close(again.value, first.value)
    torch.testing.assert_close(
        loaded.evaluate(rgb_obs, first.action, first.extras)[0], first.log_prob, atol=1e-4, rtol=0
    )


def test_supervised_loss_fits_demonstrations(rgb_obs):
    torch.manual_seed(0)
    obs = {k: v[:2] for k, v in rgb_obs.items()}
    policy = make_policy(ARVLAConfig(chunk_size=1), obs, 7)
    demo = torch.rand(2, 1, 7) * 2 - 1
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    first = None
    for _ in range(8):
        loss, metrics = policy.supervised_loss(obs, demo)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = first or metrics
    assert set(metrics) == {"token_ce", "token_accuracy", "action_l1"}
    assert (
        metrics["token_ce"] < first["token_ce"] - 1.0
        and metrics["token_accuracy"] > first["token_accuracy"]
    )


def test_gaussian_bin_targets_are_ordered_and_peak_where_encode_puts_the_action(rgb_obs):
    policy = make_policy(ARVLAConfig(n_bins=32), {k: v[:1] for k, v in rgb_obs.items()}, 7)
    tokenizer = policy.action_tokenizer
    actions = torch.tensor([-1.0, -0.51, 0.0, 0.03, 0.5, 0.999, 1.0])
    targets = policy.gaussian_bin_targets(actions, sigma_bins=0.75)
    torch.testing.assert_close(targets.sum(-1), torch.ones(7))
    assert torch.equal(targets.argmax(-1), tokenizer.index(tokenizer.encode(actions)))
    assert targets[-1, 0] == 1.0, "a = max exactly is one-hot on the token encode gives it"
    middle = targets[2]  # a = 0: mass falls off symmetrically with the distance in bins
    peak = int(middle.argmax())
    assert middle[peak - 1] == pytest.approx(float(middle[peak + 1]), abs=1e-6)
    assert middle[peak] > middle[peak + 1] > middle[peak + 2] > 0
    sharp = policy.gaussian_bin_targets(actions[[0, 1, 2, 4, 5]], sigma_bins=0.05)  # not at an edge
    assert torch.all(sharp.max(-1).values > 0.99)


def test_input_errors_name_the_problem(tmp_path, rgb_obs):
    with pytest.raises(ValueError, match="action_dim is 6.*has 7 action dimensions"):
        make_policy(ARVLAConfig(action_dim=6), rgb_obs, 7)
    policy = make_policy(ARVLAConfig(chunk_size=2), rgb_obs, 7)
    small = {
        **rgb_obs,
        "observation.images.front": rgb_obs["observation.images.front"][:, :32, :32],
    }
    with pytest.raises(
        ValueError, match=r"observation.images.front has shape \(4, 32, 32, 3\).*\(N, 64, 64, 3\)"
    ):
        policy.act(small)
    with pytest.raises(ValueError, match="action_dim=7"):
        policy.evaluate(rgb_obs, torch.zeros(4, 2, 6), {})
    with pytest.raises(ValueError, match="built for 25"):
        policy.act({**rgb_obs, "observation.state": torch.zeros(4, 30)})
    policy.save_pretrained(tmp_path / "vla")
    (tmp_path / "vla" / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Policy.from_pretrained(tmp_path / "vla")
    policy.save_pretrained(tmp_path / "vla2")
    (tmp_path / "vla2" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        Policy.from_pretrained(tmp_path / "vla2")


# ---- a tiny checkpoint in OpenVLA's layout ------------------------------------------------

TIMM_ID = (
    "vit_tiny_patch8_siglip_32"  # not a real timm id: the tiny tower's head count is set below
)


def timm_vit_features(
    state: dict[str, torch.Tensor], pixels: torch.Tensor, heads: int
) -> torch.Tensor:
    """timm's SigLIP ViT on OpenVLA's raw weights, up to the second-to-last block (Prismatic's
    get_intermediate_layers(n={depth - 2})): an independent reference of the vision mapping."""
    prefix = "vision_backbone.featurizer."
    w = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    x = F.conv2d(
        pixels,
        w["patch_embed.proj.weight"],
        w["patch_embed.proj.bias"],
        stride=w["patch_embed.proj.weight"].shape[-1],
    )
    x = x.flatten(2).transpose(1, 2) + w["pos_embed"]
    depth = len({k.split(".")[1] for k in w if k.startswith("blocks.")})
    for i in range(depth - 1):
        b = f"blocks.{i}."
        h = F.layer_norm(x, x.shape[-1:], w[b + "norm1.weight"], w[b + "norm1.bias"], eps=1e-6)
        q, k, v = (
            F.linear(h, w[b + "attn.qkv.weight"], w[b + "attn.qkv.bias"])
            .unflatten(-1, (3, heads, -1))
            .permute(2, 0, 3, 1, 4)
        )
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        x = x + F.linear(a, w[b + "attn.proj.weight"], w[b + "attn.proj.bias"])
        h = F.layer_norm(x, x.shape[-1:], w[b + "norm2.weight"], w[b + "norm2.bias"], eps=1e-6)
        h = F.gelu(F.linear(h, w[b + "mlp.fc1.weight"], w[b + "mlp.fc1.bias"]), approximate="tanh")
        x = x + F.linear(h, w[b + "mlp.fc2.weight"], w[b + "mlp.fc2.bias"])
    return x


@pytest.fixture(scope="module")
def openvla_folder(tmp_path_factory):
    """A tiny OpenVLA-layout checkpoint: timm SigLIP names (fused qkv, attn_pool), a 2-layer
    projector, a Llama LM with OpenVLA's padded vocabulary, a Llama-style tokenizer.json that
    prepends <s> and has <PAD> at `base`, two safetensors shards and their index."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("openvla-tiny")
    backend = train_tokenizer(task_instructions(), 400).backend_tokenizer
    base = backend.get_vocab_size()  # OpenVLA: 32000 (Llama-2), the action ids end here
    backend.add_special_tokens(["<PAD>"])
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))]
    )
    backend.save(str(folder / "tokenizer.json"))
    text_config = LlamaConfig(
        vocab_size=base + 64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        pad_token_id=base,
    )
    lm = LlamaForCausalLM(text_config)
    tower = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
    )
    vision = {
        "pos_embed": tower.embeddings.position_embedding.weight[None],
        "patch_embed.proj.weight": tower.embeddings.patch_embedding.weight,
        "patch_embed.proj.bias": tower.embeddings.patch_embedding.bias,
        "norm.weight": tower.post_layernorm.weight,
        "norm.bias": tower.post_layernorm.bias,
        "attn_pool.latent": torch.randn(1, 1, 24),
        "attn_pool.q.weight": torch.randn(24, 24),
    }
    for i, layer in enumerate(tower.encoder.layers):
        for part in ("weight", "bias"):
            vision[f"blocks.{i}.attn.qkv.{part}"] = torch.cat(
                [getattr(layer.self_attn, f"{p}_proj").get_parameter(part) for p in "qkv"]
            )
        for ours, timm in (
            ("layer_norm1", "norm1"),
            ("self_attn.out_proj", "attn.proj"),
            ("layer_norm2", "norm2"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
        ):
            for part in ("weight", "bias"):
                vision[f"blocks.{i}.{timm}.{part}"] = layer.get_submodule(ours).get_parameter(part)
    state = {f"vision_backbone.featurizer.{k}": v for k, v in vision.items()}
    state |= {
        "projector.fc1.weight": torch.randn(32, 24) * 0.2,
        "projector.fc1.bias": torch.randn(32) * 0.1,
        "projector.fc2.weight": torch.randn(32, 32) * 0.2,
        "projector.fc2.bias": torch.randn(32) * 0.1,
    }
    state |= {f"language_model.{k}": v for k, v in lm.state_dict().items()}
    state = {
        k: v.detach().to(torch.bfloat16).contiguous() for k, v in state.items()
    }  # OpenVLA stores bfloat16
    names = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": names[: len(names) // 2],
        "model-00002-of-00002.safetensors": names[len(names) // 2 :],
    }
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, folder / shard)
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    config = {
        "architectures": ["OpenVLAForActionPrediction"],
        "model_type": "openvla",
        "vision_backbone_id": "siglip-vit-so400m",
        "llm_backbone_id": "llama2-7b-pure",
        "arch_specifier": "no-align+gelu-mlp",
        "use_fused_vision_backbone": False,
        "timm_model_ids": [TIMM_ID],
        "timm_override_act_layers": [None],
        "image_sizes": [32],
        "image_resize_strategy": "resize-naive",
        "hf_llm_id": "meta-llama/Llama-2-7b-hf",
        "llm_max_length": 2048,
        "pad_token_id": base,
        "pad_to_multiple_of": 64,
        "n_action_bins": 256,
        "torch_dtype": "bfloat16",
        "output_projector_states": False,
        "text_config": text_config.to_dict(),
        "norm_stats": {
            "tiny_ds": {
                "action": {"q01": [-1.0] * 7, "q99": [1.0] * 7, "mask": [True] * 6 + [False]}
            }
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder, {k: v.float() for k, v in state.items()}, base


def test_openvla_checkpoint_loads_and_computes_as_openvla(openvla_folder, monkeypatch, tmp_path):
    folder, state, base = openvla_folder
    monkeypatch.setitem(openvla.SIGLIP_HEADS, TIMM_ID, 2)
    policy = ARVLAPolicy.from_pretrained(folder)  # the same entry point as our own folders
    assert policy.action_tokenizer.end == base and policy.config.action_dim == 7
    assert policy.config.vlm.rms_norm_eps == 1e-5 and policy.config.vlm.vision_feature_layer == -2
    # OpenVLA's forward for one unpadded env: [<s> | projector(ViT block depth-2) | prompt].
    reference = LlamaForCausalLM(
        LlamaConfig(**json.loads((folder / "config.json").read_text())["text_config"])
    )
    reference.load_state_dict(
        {
            k[len("language_model.") :]: v
            for k, v in state.items()
            if k.startswith("language_model.")
        }
    )
    torch.manual_seed(0)
    tasks = [
        "pick up the red cube",
        "reach the green target and stay there",
    ]  # different lengths: padding
    obs = {
        "observation.images.front": torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8),
        "task": tasks,
    }
    out = policy.act(obs, deterministic=True)
    logits, _ = policy.teacher_forced(obs, out.extras["tokens"])
    for i, task in enumerate(tasks):
        ids = policy.backbone.tokenizer(openvla.OPENVLA_PROMPT.format(task=task))["input_ids"]
        assert ids[0] == policy.backbone.tokenizer.bos_token_id
        pixels = obs["observation.images.front"][i : i + 1].permute(0, 3, 1, 2).float() / 127.5 - 1
        features = timm_vit_features(state, pixels, heads=2)
        patches = F.linear(
            F.gelu(F.linear(features, state["projector.fc1.weight"], state["projector.fc1.bias"])),
            state["projector.fc2.weight"],
            state["projector.fc2.bias"],
        )
        text = reference.get_input_embeddings()(
            torch.tensor([ids + out.extras["tokens"][i, :-1].tolist()])
        )
        embeds = torch.cat([text[:, :1], patches, text[:, 1:]], dim=1)
        expected = reference(inputs_embeds=embeds).logits[0, -7:, base - 256 : base]
        torch.testing.assert_close(logits[i], expected, atol=1e-4, rtol=1e-4)
    # predict_action's de-tokenisation: bin_centers[clip(vocab_size - token - 1, 0, 254)].
    bin_centers = (np.linspace(-1, 1, 256)[:-1] + np.linspace(-1, 1, 256)[1:]) / 2
    expected_action = bin_centers[np.clip(base - out.extras["tokens"].numpy() - 1, 0, 254)]
    np.testing.assert_allclose(out.action.view(2, 7).numpy(), expected_action, atol=1e-6)
    # Saved in our own layout, it loads back with identical outputs.
    policy.save_pretrained(tmp_path / "ours")
    again = Policy.from_pretrained(tmp_path / "ours").act(obs, deterministic=True)
    assert torch.equal(again.extras["tokens"], out.extras["tokens"])
    torch.testing.assert_close(again.log_prob, out.log_prob)


def test_openvla_folder_errors_name_the_file(openvla_folder, tmp_path):
    folder, _, _ = openvla_folder
    with pytest.raises(ValueError, match="vision_heads"):
        openvla.load_openvla(folder)
    for missing in ("tokenizer.json", "model-00002-of-00002.safetensors", "config.json"):
        broken = tmp_path / missing
        broken.mkdir()
        for file in folder.iterdir():
            if file.name != missing:
                (broken / file.name).symlink_to(file)
        with pytest.raises(FileNotFoundError, match=missing.replace(".", r"\.")):
            openvla.load_openvla(broken, vision_heads=2)
    fused = tmp_path / "fused"
    fused.mkdir()
    for file in folder.iterdir():
        (fused / file.name).symlink_to(file)
    config = json.loads((folder / "config.json").read_text()) | {"use_fused_vision_backbone": True}
    (fused / "config.json").unlink()
    (fused / "config.json").write_text(json.dumps(config))
    with pytest.raises(NotImplementedError, match="DINOv2"):
        openvla.load_openvla(fused, vision_heads=2)
