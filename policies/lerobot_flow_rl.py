"""LeRobot's flow-matching VLAs (SmolVLA, pi0) as RL policies: pi_RL's Flow-Noise / Flow-SDE
recipe (arXiv 2510.25889) applied to LeRobot checkpoints.

A LeRobot SmolVLA or pi0 samples an action chunk by encoding the prefix (images, instruction,
and for SmolVLA the state) once into the VLM's key/value cache and then taking K Euler steps
of its action expert from noise at t = 1 to an action at t = 0 (``sample_actions`` /
``denoise_step``). `LeRobotFlowPolicy` runs that same chain with LeRobot's own modules (the
prefix through ``embed_prefix`` and the VLM, each step's velocity from ``denoise_step``) and
makes the configured `stochastic_steps` Gaussian, with the math of `flow_likelihood.py`:

- Flow-SDE (``likelihood: sde``): the marginal-preserving SDE step, no extra parameters;
- Flow-Noise (``likelihood: noise``): the Euler mean plus a learned std from a small noise head
  on the expert's output features (the input of LeRobot's ``action_out_proj``); its last layer
  starts at zero, so the initial std is the middle of `noise_std_range` for every element.

With no stochastic step (``act(deterministic=True)``) the chain IS LeRobot's sampler: the same
velocities, the same Euler updates, the same output for the same initial noise.

Which elements are random: the model denoises a padded chunk (LeRobot's ``chunk_size`` actions
of ``max_action_dim`` values) of which the env executes the first `chunk_size` (ours) actions'
first A values. Only those executed elements get noise; the others take the plain Euler step.
The chain is still a Markov chain with an exact density, now over the executed elements alone:
``log pi(chain) = sum over stochastic steps k of log N(x_{k+1}[exec]; mean_k[exec], std_k[exec]^2)``,
so the log-prob is an (N, T, A) tensor per executed element (what per-action / per-token
ratios read) and padding adds no variance to the policy gradient. `extras["chain"]` stores the
whole padded chain (N, K+1, H, D): the network reads every element, so re-scoring needs them.

The env action is ``clip(unnormalize(chain[:, K][:, :T, :A]))`` with the checkpoint's
post-processor: a fixed function of the chain, so the estimator stays exact (see flow.py).

The critic: a value head on the mean of the VLM's final prefix hidden states over real tokens
(``critic: head``), or an MLP on the checkpoint-normalised ``observation.state``
(``critic: state``). Which LeRobot weights RL trains is LeRobot's own choice (SmolVLA:
``train_expert_only``, ``freeze_vision_encoder``, ``train_state_proj``), changeable with
`lerobot_overrides`.

Loading: the folder is read with `lerobot_adapter.load_lerobot_parts` (config, weights, the
pre-processor that tokenizes and normalises, the post-processor that unnormalises) and our
observations are mapped with the adapter's `lerobot_batch`. SmolVLA builds its VLM from
``vlm_model_name`` at construction: only the VLM's config and tokenizer are read (we force
``load_vlm_weights: false``; the checkpoint holds every weight), from a local folder or the
Hugging Face cache (offline). LeRobot only reads the tokenizer from the VLM's processor, so it
is built tokenizer-only (the full SmolVLM processor needs the ``num2words`` package of
``lerobot[smolvla]``). `build_tiny_smolvla` writes a complete, few-hundred-thousand-parameter
SmolVLA checkpoint (and its tiny VLM) locally: the tests load it exactly as a hub checkpoint.

pi0 goes through the same code (`PI0Backend`: its ``embed_prefix`` / ``denoise_step`` have the
same shape; the state enters the suffix there) but is not exercised here. LeRobot fixes its
sizes (PaliGemma 2B + Gemma 300M, a 257k-token embedding whose width must equal the image
projection's 2048): even with patched Gemma sizes a "tiny" pi0 has 1.08B parameters (33 s to
build on 2 cores). And LeRobot 0.6.1's pi0 (``pi_gemma.py``) calls ``create_causal_mask`` with
a ``cache_position`` argument that the transformers of this environment (5.23; LeRobot pins
< 5.6) no longer takes, so LeRobot's own pi0 inference fails here as well.

Note on versions: SmolVLA's ``denoise_step`` relies on transformers < 5.6's ``crop``; the
prefix cache here is a `legacy_crop_cache_class` cache, which keeps that meaning, so the chain
runs on both (LeRobot's own SmolVLA sampler does not on transformers >= 5.6).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn

from policies.base import PolicyOutput, register_policy
from policies.lerobot_adapter import (
    LeRobotPolicy,
    LeRobotPolicyConfig,
    hub_offline,
    legacy_crop_cache_class,
    load_lerobot_parts,
    tokenizer_only_vlm_processor,
)
from policies.mlp import mlp
from policies.vla.flow_likelihood import LOG_SQRT_2PI, ode_mean, step_distribution, time_grid

SUPPORTED_TYPES = ("smolvla", "pi0")
VLM_SPECIAL_TOKENS = {  # the SmolVLM tokenizer's extra special tokens that LeRobot reads
    "fake_image_token": "<fake_token_around_image>",
    "global_image_token": "<global-img>",
    "image_token": "<image>",
    "end_of_utterance_token": "<end_of_utterance>",
}


@dataclasses.dataclass
class LeRobotFlowConfig(LeRobotPolicyConfig):
    kind: str = "lerobot_flow"
    # path: a local LeRobot pretrained_model folder, or a hub id already in the HF cache
    num_steps: int = 0  # K denoising steps; 0: the checkpoint's (SmolVLA num_steps, pi0 num_inference_steps)
    likelihood: Literal["noise", "sde"] = "sde"
    stochastic_steps: Literal["all"] | tuple[int, ...] = "all"
    noise_level: float = 0.5  # Flow-SDE: a in sigma_t = a * sqrt(t / (1 - t))
    noise_std_range: tuple[float, float] = (0.08, 0.16)  # Flow-Noise: bounds of the learned std
    noise_hidden: int = 64
    value_hidden: int = 64
    critic: str = "head"  # "head": MLP on pooled prefix features; "state": MLP on the normalised state
    detach_critic: bool = False  # the value loss does not reach the features the actor reads
    # LeRobot config fields set before the model is built, e.g. {"train_expert_only": false}
    lerobot_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Prefix:
    """What the K denoising steps of a decision share.

    pad_masks: (N, P) real prefix tokens; cache: the VLM's keys/values (a transformers
    DynamicCache); features: (N, H) mean final hidden state over real tokens (critic input);
    state: (N, S) padded state, which pi0's suffix reads (None for SmolVLA)."""

    pad_masks: torch.Tensor
    cache: Any
    features: torch.Tensor
    state: torch.Tensor | None = None

    def repeated(self, times: int) -> Prefix:
        """Each env's prefix `times` times in a row (env-major), in a new cache."""
        if times == 1:
            return self
        cache = prefix_cache(self.cache, times)
        state = None if self.state is None else self.state.repeat_interleave(times, 0)
        return Prefix(self.pad_masks.repeat_interleave(times, 0), cache, self.features.repeat_interleave(times, 0), state)


def prefix_cache(cache: Any, times: int = 1) -> Any:
    """A `LegacyCropCache` holding `cache`'s keys/values (each env's `times` times in a row)."""
    out = legacy_crop_cache_class()()
    for index, layer in enumerate(cache.layers):
        keys, values = layer.keys, layer.values
        if times > 1:
            keys, values = keys.repeat_interleave(times, 0), values.repeat_interleave(times, 0)
        out.update(keys, values, index)
    return out


class FlowBackend:
    """The model-specific calls: a processed LeRobot batch -> `Prefix`, and one denoising step."""

    def __init__(self, lerobot_policy: Any):
        self.policy = lerobot_policy
        self.model = lerobot_policy.model

    def encode(self, batch: dict[str, Any]) -> Prefix:
        raise NotImplementedError

    def velocity(self, prefix: Prefix, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def pooled(hidden: torch.Tensor, pad_masks: torch.Tensor) -> torch.Tensor:
        weights = pad_masks.to(torch.float32)[..., None]
        return (hidden.float() * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def set_trainable(self) -> None:
        """LeRobot's own fine-tuning flags decide what trains (after the adapter froze it all)."""
        self.policy.requires_grad_(True)


class SmolVLABackend(FlowBackend):
    def encode(self, batch: dict[str, Any]) -> Prefix:
        from lerobot.policies.common.vla_utils import make_att_2d_masks
        from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

        images, img_masks = self.policy.prepare_images(batch)
        state = self.policy.prepare_state(batch)
        embs, pad_masks, att_masks = self.model.embed_prefix(
            images, img_masks, batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK], state=state
        )
        (hidden, _), cache = self.model.vlm_with_expert.forward(
            attention_mask=make_att_2d_masks(pad_masks, att_masks),
            position_ids=torch.cumsum(pad_masks, dim=1) - 1,
            past_key_values=None,
            inputs_embeds=[embs, None],
            use_cache=True,
        )
        return Prefix(pad_masks, prefix_cache(cache), self.pooled(hidden, pad_masks))

    def velocity(self, prefix: Prefix, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model.denoise_step(prefix.pad_masks, prefix.cache, x, t)

    def set_trainable(self) -> None:
        super().set_trainable()
        self.model.vlm_with_expert.set_requires_grad()
        self.model.set_requires_grad()


class PI0Backend(FlowBackend):
    def encode(self, batch: dict[str, Any]) -> Prefix:
        from lerobot.policies.common.vla_utils import make_att_2d_masks, prepare_attention_masks_4d
        from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

        images, img_masks = self.policy._preprocess_images(batch)
        state = self.policy.prepare_state(batch)
        embs, pad_masks, att_masks = self.model.embed_prefix(
            images, img_masks, batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK]
        )
        language_model = self.model.paligemma_with_expert.paligemma.model.language_model
        language_model.config._attn_implementation = "eager"  # as LeRobot's sample_actions
        (hidden, _), cache = self.model.paligemma_with_expert.forward(
            attention_mask=prepare_attention_masks_4d(make_att_2d_masks(pad_masks, att_masks)),
            position_ids=torch.cumsum(pad_masks, dim=1) - 1,
            past_key_values=None,
            inputs_embeds=[embs, None],
            use_cache=True,
        )
        return Prefix(pad_masks, cache, self.pooled(hidden, pad_masks), state)

    def velocity(self, prefix: Prefix, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model.denoise_step(prefix.state, prefix.pad_masks, prefix.cache, x, t)

    def set_trainable(self) -> None:
        super().set_trainable()
        self.model.paligemma_with_expert._set_requires_grad()


BACKENDS: dict[str, type[FlowBackend]] = {"smolvla": SmolVLABackend, "pi0": PI0Backend}


def resolve_checkpoint(path: str) -> Path:
    """A local folder, or a hub id (``lerobot/smolvla_base``) already in the Hugging Face cache."""
    local = Path(path)
    if local.is_dir() or path.startswith((".", "/", "~")) or path.count("/") != 1:
        return local.expanduser()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path, local_files_only=True))
    except Exception as error:  # noqa: BLE001 - any cache miss reads the same to the user
        raise FileNotFoundError(
            f"{path!r} is neither a local folder nor a hub checkpoint in the Hugging Face cache (nothing is "
            f"downloaded here). On a machine with network: `huggingface-cli download {path}` (and the VLM its "
            "config names, e.g. HuggingFaceTB/SmolVLM2-500M-Video-Instruct, for its config and tokenizer)."
        ) from error


def load_flow_parts(directory: Path, config: LeRobotFlowConfig, weights: bool = True) -> tuple[Any, Any, Any]:
    """The LeRobot policy and processors of `directory`, checked to be a supported flow VLA."""
    raw = json.loads((directory / "config.json").read_text()) if (directory / "config.json").is_file() else {}
    kind = raw.get("type")
    if kind is not None and kind not in SUPPORTED_TYPES:
        raise ValueError(
            f"LeRobot policy type {kind!r} at {directory} has no flow chain to fine-tune with RL; "
            f"policy.kind: lerobot_flow supports {', '.join(SUPPORTED_TYPES)} (use kind: lerobot to evaluate it)."
        )
    return load_lerobot_parts(directory, config.device, weights=weights, config_overrides=dict(config.lerobot_overrides))


@register_policy
class LeRobotFlowPolicy(LeRobotPolicy):
    """A LeRobot SmolVLA / pi0 whose denoising chain has an exact log-prob, plus a value head."""

    kind = "lerobot_flow"
    config_class = LeRobotFlowConfig
    runtime_fields = ("stochastic_steps", "noise_level", "detach_critic", "device")
    executed: torch.Tensor  # (H, D) buffer: the model's elements that the env executes

    def __init__(self, config: LeRobotFlowConfig, parts: tuple[Any, Any, Any] | None = None):
        if parts is None:
            if not config.path:
                raise ValueError("LeRobotFlowConfig.path must name a LeRobot SmolVLA/pi0 checkpoint folder or hub id.")
            directory = resolve_checkpoint(config.path)
            parts = load_flow_parts(directory, config)
        lerobot_config = parts[0].config
        if lerobot_config.type not in SUPPORTED_TYPES:
            raise ValueError(
                f"LeRobot policy type {lerobot_config.type!r} is not a supported flow VLA ({', '.join(SUPPORTED_TYPES)})."
            )
        if getattr(lerobot_config, "adapt_to_pi_aloha", False):
            raise ValueError("adapt_to_pi_aloha checkpoints transform actions outside the chain; not supported for RL.")
        if lerobot_config.type == "smolvla" and not lerobot_config.use_cache:
            raise ValueError("SmolVLA's denoising steps read the prefix's KV cache: set use_cache: true.")
        super().__init__(config, parts)
        self.policy.eval()
        self.backend = BACKENDS[lerobot_config.type](self.policy)
        self.backend.set_trainable()
        config = self.config
        self.horizon = int(lerobot_config.chunk_size)  # H actions the model denoises
        self.padded_dim = int(self.policy.model.action_out_proj.out_features)  # D >= A
        expert_width = int(self.policy.model.action_out_proj.in_features)
        lerobot_steps = getattr(lerobot_config, "num_steps", None) or lerobot_config.num_inference_steps
        self.num_steps = config.num_steps or int(lerobot_steps)
        self.stochastic = self._stochastic_steps(config, self.num_steps)
        low, high = config.noise_std_range
        if not 0 < low <= high:
            raise ValueError(f"noise_std_range must satisfy 0 < min <= max; got {config.noise_std_range}.")
        if config.noise_level <= 0:
            raise ValueError(f"noise_level must be > 0; got {config.noise_level}.")
        if config.critic not in ("head", "state"):
            raise ValueError(f"policy.critic must be 'head' or 'state'; got {config.critic!r}.")
        mask = torch.zeros(self.horizon, self.padded_dim, dtype=torch.bool)
        mask[: config.chunk_size, : config.action_dim] = True
        self.register_buffer("executed", mask, persistent=False)
        device = torch.device(config.device)
        self.noise_head: nn.Sequential | None = None
        if config.likelihood == "noise":
            self.noise_head = nn.Sequential(
                nn.Linear(expert_width, config.noise_hidden), nn.Tanh(), nn.Linear(config.noise_hidden, self.padded_dim)
            )
            head = cast(nn.Linear, self.noise_head[2])
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        elif config.likelihood != "sde":
            raise ValueError(f"Unknown likelihood {config.likelihood!r}; valid: noise, sde.")
        if config.critic == "state":
            state = lerobot_config.robot_state_feature
            if state is None:
                raise ValueError("policy.critic: state needs a LeRobot policy that reads observation.state.")
            self.state_critic = mlp([int(state.shape[0]), config.value_hidden, config.value_hidden, 1], "tanh", out_gain=1.0)
        else:
            width = self._prefix_width()
            self.value_head = nn.Sequential(nn.Linear(width, config.value_hidden), nn.Tanh(), nn.Linear(config.value_hidden, 1))
        self.to(device)

    @staticmethod
    def _stochastic_steps(config: LeRobotFlowConfig, num_steps: int) -> frozenset[int]:
        if config.stochastic_steps == "all":
            return frozenset(range(num_steps))
        bad = [k for k in config.stochastic_steps if not 0 <= k < num_steps]
        if bad:
            raise ValueError(f"stochastic_steps {bad} are outside the {num_steps} denoising steps (valid: 0..{num_steps - 1}).")
        return frozenset(config.stochastic_steps)

    def _prefix_width(self) -> int:
        model = self.policy.model
        if hasattr(model, "vlm_with_expert"):
            return int(model.vlm_with_expert.config.text_config.hidden_size)
        return int(model.paligemma_with_expert.paligemma.config.text_config.hidden_size)

    # ---- parameters --------------------------------------------------------------------------

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The VLM's trainable parameters (none with LeRobot's default train_expert_only)."""
        model = self.policy.model
        vlm = model.vlm_with_expert.vlm if hasattr(model, "vlm_with_expert") else model.paligemma_with_expert.paligemma
        return [p for p in vlm.parameters() if p.requires_grad]

    # ---- the chain ---------------------------------------------------------------------------

    def processed_batch(self, obs: dict[str, Any], actions: torch.Tensor | None = None) -> dict[str, Any]:
        """Our observations (and env-unit actions) through the adapter's mapping and the
        checkpoint's pre-processor (tokenise, normalise, move to the device)."""
        batch = self.lerobot_batch(obs)
        if actions is not None:
            batch["action"] = actions.float()
        return self.preprocessor(batch)

    def field(self, prefix: Prefix, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """LeRobot's velocity at x (B, H, D), t (B,) (B a multiple of the prefix's N, env-major)
        and, for Flow-Noise, the learned std (B, H, D) from the expert's output features."""
        prefix = prefix.repeated(x.shape[0] // prefix.pad_masks.shape[0])
        captured: list[torch.Tensor] = []
        hook = self.policy.model.action_out_proj.register_forward_hook(lambda m, args, out: captured.append(args[0]))
        try:
            velocity = self.backend.velocity(prefix, x, t).float()
        finally:
            hook.remove()
        if self.noise_head is None:
            return velocity, None
        low, high = self.config.noise_std_range
        return velocity, low + (high - low) * torch.sigmoid(self.noise_head(captured[-1].float()))

    def sample(
        self, obs: dict[str, Any], deterministic: bool = False, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The chain (N, K+1, H, D) from `noise` (default N(0, I)) and its log-prob (N,)."""
        return self.sample_from(self.backend.encode(self.processed_batch(obs)), deterministic, noise)

    def sample_from(
        self, prefix: Prefix, deterministic: bool = False, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`sample` from an encoded prefix."""
        n, device = prefix.pad_masks.shape[0], prefix.features.device
        x = torch.randn(n, self.horizon, self.padded_dim, device=device) if noise is None else noise.to(device).float()
        grid = time_grid(self.num_steps, device)
        chain, log_prob = [x], torch.zeros(n, device=device)
        for k in range(self.num_steps):
            t, dt = grid[k].expand(n), (grid[k] - grid[k + 1]).expand(n)
            velocity, learned_std = self.field(prefix, x, t)
            euler = ode_mean(x, velocity, dt.view(-1, 1, 1))
            if k in self.stochastic and not deterministic:
                mean, std = step_distribution(self.config.likelihood, x, velocity, learned_std, t, dt, self.num_steps,
                                              self.config.noise_level)
                eps = torch.randn_like(mean)
                x = torch.where(self.executed, mean + std * eps, euler)
                log_prob = log_prob + ((-0.5 * eps.square() - std.log() - LOG_SQRT_2PI) * self.executed).flatten(1).sum(1)
            else:
                x = euler
            chain.append(x)
        return torch.stack(chain, dim=1), log_prob

    def chunk_from_chain(self, chain: torch.Tensor) -> torch.Tensor:
        """(N, T, A) env actions of chains (N, K+1, H, D): unnormalised, clipped when configured."""
        action = self.postprocessor(chain[:, -1, : self.config.chunk_size, : self.config.action_dim]).float()
        return action.clamp(-1.0, 1.0) if self.config.clip_actions else action

    def critic_value(self, prefix: Prefix | None, batch: dict[str, Any]) -> torch.Tensor:
        """(N,) value: the state critic's of the batch's state, or the value head's of the prefix."""
        if self.config.critic == "state":
            return self.state_critic(batch["observation.state"].float())[:, 0]
        assert prefix is not None  # encoded whenever critic == "head"
        features = prefix.features.detach() if self.config.detach_critic else prefix.features
        return self.value_head(features)[:, 0]

    # ---- the Policy contract -----------------------------------------------------------------

    @torch.no_grad()
    def act(self, obs: dict[str, Any], deterministic: bool = False) -> PolicyOutput:
        """A chunk (N, T, A) with the chain's log-prob (N,), the value (N,) and the chain."""
        batch = self.processed_batch(obs)
        prefix = self.backend.encode(batch)
        chain, log_prob = self.sample_from(prefix, deterministic)
        out = obs_device(obs)
        return PolicyOutput(
            action=self.chunk_from_chain(chain).to(out),
            log_prob=log_prob.to(out),
            value=self.critic_value(prefix, batch).to(out),
            extras={"chain": chain.to(out)},
        )

    def evaluate(self, obs, actions, extras):
        elements, entropy, value = self.evaluate_elements(obs, actions, extras)
        return elements.flatten(1).sum(1), entropy, value

    def evaluate_elements(self, obs, actions, extras):
        """The stored chain's log-prob per executed element (N, T, A) (summed over the
        stochastic steps), its entropy (N,) and the value (N,), with gradients."""
        if "chain" not in extras:
            raise KeyError("extras lacks 'chain' (N, K+1, H, D): pass the extras that act() returned.")
        chain = extras["chain"]
        expected = (actions.shape[0], self.num_steps + 1, self.horizon, self.padded_dim)
        if tuple(chain.shape) != expected:
            raise ValueError(f"extras['chain'] has shape {tuple(chain.shape)}; expected (N, K+1, H, D) = {expected}.")
        batch = self.processed_batch(obs)
        prefix = self.backend.encode(batch)
        device = prefix.features.device
        n, t_len, a_dim = actions.shape[0], self.config.chunk_size, self.config.action_dim
        value = self.critic_value(prefix, batch).to(obs_device(obs))
        if not self.stochastic:
            zeros = torch.zeros(n, t_len, a_dim, device=obs_device(obs))
            return zeros, torch.zeros(n, device=obs_device(obs)), value
        chain = chain.to(device)
        steps = torch.tensor(sorted(self.stochastic), device=device)
        grid = time_grid(self.num_steps, device)
        x = chain[:, steps].flatten(0, 1)  # (N * S, H, D), env-major
        x_next = chain[:, steps + 1].flatten(0, 1)
        t = grid[steps].repeat(n)
        dt = (grid[steps] - grid[steps + 1]).repeat(n)
        velocity, learned_std = self.field(prefix, x, t)
        mean, std = step_distribution(self.config.likelihood, x, velocity, learned_std, t, dt, self.num_steps,
                                      self.config.noise_level)
        mean, std, x_next = (v[:, :t_len, :a_dim] for v in (mean, std, x_next))
        z = (x_next - mean) / std
        elements = (-0.5 * z.square() - std.log() - LOG_SQRT_2PI).view(n, len(steps), t_len, a_dim).sum(1)
        entropy = (0.5 + LOG_SQRT_2PI + std.log()).view(n, -1).sum(1)
        return elements.to(obs_device(obs)), entropy.to(obs_device(obs)), value

    def value(self, obs: dict[str, Any]) -> torch.Tensor:
        """(N,) state value of an observation batch."""
        batch = self.processed_batch(obs)
        prefix = self.backend.encode(batch) if self.config.critic == "head" else None
        return self.critic_value(prefix, batch).to(obs_device(obs))

    def supervised_loss(self, obs: dict[str, Any], actions: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """LeRobot's own flow-matching loss of env-unit `actions` (N, T, A) (normalised by the
        checkpoint's pre-processor; the model's chunk beyond T is masked as padding)."""
        if actions.dim() != 3 or actions.shape[2] != self.config.action_dim or actions.shape[1] > self.horizon:
            raise ValueError(f"actions has shape {tuple(actions.shape)}; expected (N, T <= {self.horizon}, {self.config.action_dim}).")
        batch = self.processed_batch(obs, actions)
        n, t_len = actions.shape[:2]
        device = batch["action"].device
        if t_len < self.horizon:
            pad = torch.zeros(n, self.horizon - t_len, self.config.action_dim, device=device)
            batch["action"] = torch.cat((batch["action"], pad), dim=1)
        batch["action_is_pad"] = (torch.arange(self.horizon, device=device) >= t_len).expand(n, -1)
        loss, info = self.policy.forward(batch)
        return loss, {"flow_mse": float(loss.detach())}

    # ---- save / load -------------------------------------------------------------------------

    @classmethod
    def load_parts(cls, directory: Path, config: LeRobotPolicyConfig, weights: bool = True) -> tuple[Any, Any, Any]:
        if not isinstance(config, LeRobotFlowConfig):
            raise TypeError(f"{cls.__name__} loads its parts with a LeRobotFlowConfig; got {type(config).__name__}.")
        return load_flow_parts(directory, config, weights)


def obs_device(obs: dict[str, Any]) -> torch.device:
    """Where an observation batch's tensors live (outputs go back there)."""
    return next((v.device for v in obs.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))


def load_lerobot_flow_policy(path: str | Path, **overrides: Any) -> LeRobotFlowPolicy:
    """A `LeRobotFlowPolicy` of a LeRobot SmolVLA/pi0 checkpoint (`LeRobotFlowConfig` fields as overrides)."""
    return LeRobotFlowPolicy(LeRobotFlowConfig(path=str(path), **overrides))


# ---- a tiny local SmolVLA ------------------------------------------------------------------------


def build_tiny_vlm(directory: str | Path, hidden: int = 64, layers: int = 2, image_size: int = 32) -> Path:
    """A randomly initialised SmolVLM config (Llama text model of `layers` x `hidden`, a one-layer
    vision tower) and a BPE tokenizer trained on the tasks' instructions, written to
    `directory`: what SmolVLA's ``vlm_model_name`` needs, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, SmolVLMConfig

    from policies.vla.backbone import task_instructions

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    special = ["<pad>", "<s>", "</s>", *VLM_SPECIAL_TOKENS.values()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        task_instructions(),
        trainers.BpeTrainer(vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                            show_progress=False),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        extra_special_tokens=dict(VLM_SPECIAL_TOKENS))
    tokenizer.save_pretrained(directory)
    heads = max(2, hidden // 16)
    SmolVLMConfig(  # type: ignore[call-arg]  # PreTrainedConfig takes extra kwargs (pad_token_id); the dataclass signature omits them
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                         head_dim=hidden // heads, max_position_embeddings=512, rms_norm_eps=1e-5),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=image_size // 4),
        scale_factor=2,
        # one token's id is an int; transformers annotates convert_tokens_to_ids without the overload
        image_token_id=tokenizer.convert_tokens_to_ids(VLM_SPECIAL_TOKENS["image_token"]),  # type: ignore[arg-type]
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(directory)
    return directory


def build_tiny_smolvla(
    directory: str | Path,
    state_dim: int = 25,
    action_dim: int = 7,
    cameras: tuple[str, ...] = ("front",),
    image_size: int = 32,
    chunk_size: int = 4,
    num_steps: int = 4,
    stats: dict[str, dict[str, torch.Tensor]] | None = None,
    seed: int = 0,
    **smolvla_fields: Any,
) -> Path:
    """Write a tiny, randomly initialised LeRobot SmolVLA checkpoint under `directory`: its VLM
    (config + tokenizer) in ``vlm/`` and the ``pretrained_model/`` folder lerobot-train would
    write (config, weights, processors with `stats`: default mean 0 / std 1). Returns the
    ``pretrained_model`` path. Defaults fit Reach with one 32x32 camera."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    directory = Path(directory)
    vlm = build_tiny_vlm(directory / "vlm", image_size=image_size).resolve()
    inputs = {f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, image_size, image_size)) for c in cameras}
    inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (state_dim,))
    fields = dict(
        vlm_model_name=str(vlm), load_vlm_weights=False, num_vlm_layers=2, chunk_size=chunk_size, n_action_steps=chunk_size,
        resize_imgs_with_padding=(image_size, image_size), num_steps=num_steps, expert_width_multiplier=0.5,
        tokenizer_max_length=16, device="cpu", input_features=inputs,
        output_features={"action": PolicyFeature(FeatureType.ACTION, (action_dim,))},
    )
    fields.update(smolvla_fields)
    config = SmolVLAConfig(**fields)
    torch.manual_seed(seed)
    with hub_offline(), tokenizer_only_vlm_processor():
        policy = SmolVLAPolicy(config)
        with torch.no_grad():  # LeRobot zero-inits nothing we rely on; make the output layers non-trivial
            policy.model.action_out_proj.weight.normal_(0.0, 1.0 / math.sqrt(policy.model.action_out_proj.in_features))
        if stats is None:
            stats = {"observation.state": {"mean": torch.zeros(state_dim), "std": torch.ones(state_dim)},
                     "action": {"mean": torch.zeros(action_dim), "std": torch.ones(action_dim)}}
        preprocessor, postprocessor = make_pre_post_processors(config, dataset_stats=stats)
    target = directory / "pretrained_model"
    policy.save_pretrained(target)
    preprocessor.save_pretrained(target)
    postprocessor.save_pretrained(target)
    return target
