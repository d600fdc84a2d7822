"""Flow-matching VLA in pi0's shape (Black et al. 2024, arXiv 2410.24164), with pi_RL's two
exact-likelihood modes for RL (arXiv 2510.25889).

    prefix  [pad | instruction | image patches | state]  -> the shared VLM (backbone.py), once
    suffix  [T noisy action tokens + time embedding]     -> the action expert, K times

The action expert is a stack of `transformers` decoder layers of the prefix LM's architecture
(Llama or Qwen2) with the LM's number of layers, key/value heads and head size, but its own
(smaller) width. Layer l of the expert attends to its own T tokens (bidirectionally) and to
the keys/values layer l of the LM computed for the prefix; the prefix never attends to the
suffix. The prefix's keys/values are computed once per decision and reused, read-only, by
all K denoising steps (`PrefixKV` hands them to the attention layers without storing
anything, so no cache object is mutated between steps).

Flow matching (openpi's convention): x_t = t * noise + (1 - t) * action, the expert predicts
v = noise - action, t ~ Beta(1.5, 1) (leaning to the noisy end), sampling integrates from
t = 1 to t = 0 in K Euler steps. For RL the configured `stochastic_steps` become Gaussian
steps (Flow-Noise: a learned std; Flow-SDE: Flow-GRPO's marginal-preserving SDE), which gives
the chain an exact log-prob; `flow_likelihood.py` holds that math.

The returned action is the chain's last point clipped to [-1, 1]. The log-prob is that of the
unclipped chain: clipping is a fixed function of the chain, so the policy-gradient estimator
stays exact (the env sees clip(x) whatever the policy's density of x is).

The value head (critic) reads the mean of the prefix LM's final hidden states over real
tokens: a function of the observation only, as `V(s)` for GAE bootstrapping must be.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from functools import partial
from typing import Any, Literal, cast

import torch
import transformers
from torch import nn
from transformers import PreTrainedTokenizerFast
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)
from transformers.models.qwen2.modeling_qwen2 import (
    Qwen2DecoderLayer,
    Qwen2RMSNorm,
    Qwen2RotaryEmbedding,
)

from policies.base import Policy, PolicyConfig, PolicyOutput, register_policy
from policies.vla.backbone import (
    VisionLanguagePrefix,
    VLAStateInputs,
    VLMConfig,
    language_model_config,
    load_tokenizer,
    task_instructions,
    train_tokenizer,
)
from policies.vla.flow_likelihood import chain_log_prob, sample_chain

EXPERT_LAYERS = {
    "llama": (LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding),
    "qwen2": (Qwen2DecoderLayer, Qwen2RMSNorm, Qwen2RotaryEmbedding),
}


@dataclasses.dataclass
class FlowVLAConfig(PolicyConfig):
    kind: str = "flow_vla"
    vlm: VLMConfig = dataclasses.field(default_factory=VLMConfig)
    action_dim: int = 0  # A, filled from the env when 0
    chunk_size: int = 4  # T actions per decision
    num_steps: int = 10  # K Euler steps from t = 1 to t = 0
    # action expert: vlm.layers layers with the LM's kv heads and head size, its own width
    expert_hidden: int = 64
    expert_heads: int = 4
    expert_intermediate: int = 128
    # RL likelihood: which denoising steps are Gaussian ("all" or step indices in [0, K))
    likelihood: Literal["noise", "sde"] = "sde"
    stochastic_steps: Literal["all"] | tuple[int, ...] = "all"
    noise_level: float = 0.5  # Flow-SDE: a in sigma_t = a * sqrt(t / (1 - t))
    noise_std_range: tuple[float, float] = (0.08, 0.16)  # Flow-Noise: bounds of the learned std
    noise_hidden: int = 64
    time_beta: tuple[float, float] = (1.5, 1.0)  # flow-matching time ~ Beta(alpha, beta) (pi0)
    value_hidden: int = 64
    state_keys: tuple[str, ...] = ("observation.state",)
    state_dim: int = 0  # filled from the env when 0 (no state token when state_keys is empty)
    detach_critic: bool = False  # the value head learns on the backbone's features without changing them
    critic: str = "head"  # "head": value head on the backbone; "state": a separate MLP on the state features
    critic_keys: tuple[str, ...] = ()  # the state critic's inputs when not state_keys (may be privileged)
    critic_dim: int = 0  # filled from the env when critic_keys are given
    lora_rank: int = 0  # > 0: LoRA adapters on the backbone, which is then frozen (RL fine-tuning)
    lora_alpha: float = 16.0


class PrefixKV:
    """The prefix's per-layer keys/values (each (N, kv_heads, P, head_dim), rotary embedding
    applied), shown to the expert's attention layers through the one method of a transformers
    `Cache` they call. `update` returns prefix + suffix keys/values and stores nothing."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]):
        self.keys, self.values = keys, values

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = torch.cat((self.keys[layer_idx], key), dim=2)
        values = torch.cat((self.values[layer_idx], value), dim=2)
        return keys, values


@dataclasses.dataclass
class EncodedPrefix:
    """What the K denoising steps of a decision share.

    kv:        the prefix LM's keys/values per layer
    mask:      (N, P) 1 on real prefix tokens
    length:    (N,) number of real prefix tokens: the suffix's first RoPE position
    features:  (N, H) mean of the LM's final hidden states over real tokens (critic input)
    """

    kv: PrefixKV
    mask: torch.Tensor
    length: torch.Tensor
    features: torch.Tensor

    def repeated(self, times: int) -> EncodedPrefix:
        """Each env's prefix `times` times in a row (env-major), for batched denoising steps."""
        if times == 1:
            return self

        def rep(x: torch.Tensor) -> torch.Tensor:
            return x.repeat_interleave(times, dim=0)

        kv = PrefixKV([rep(k) for k in self.kv.keys], [rep(v) for v in self.kv.values])
        return EncodedPrefix(kv, rep(self.mask), rep(self.length), rep(self.features))


def cache_tensors(cache: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer keys and values of a transformers DynamicCache (4.56+ `layers`, or older lists)."""
    if hasattr(cache, "layers"):
        return [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]
    return list(cache.key_cache), list(cache.value_cache)


def time_embedding(
    t: torch.Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0
) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of times t (B,) in [0, 1] (openpi's periods)."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = t[:, None] * (2 * math.pi / period)
    return torch.cat((angle.sin(), angle.cos()), dim=1)


class ActionExpert(nn.Module):
    """Decoder layers over the T action tokens that also attend to the prefix's keys/values."""

    def __init__(self, config: FlowVLAConfig):
        super().__init__()
        vlm = config.vlm
        if vlm.hidden % vlm.heads:
            raise ValueError(f"vlm.hidden {vlm.hidden} is not a multiple of vlm.heads {vlm.heads}.")
        if config.expert_heads % vlm.kv_heads:
            raise ValueError(
                f"expert_heads {config.expert_heads} is not a multiple of vlm.kv_heads {vlm.kv_heads}."
            )
        expert_vlm = dataclasses.replace(
            vlm,
            hidden=config.expert_hidden,
            heads=config.expert_heads,
            intermediate=config.expert_intermediate,
        )
        # the expert builds no token embeddings: the vocabulary size is a placeholder
        self.lm_config = language_model_config(expert_vlm, vocab_size=vlm.text_vocab_size)
        self.lm_config.head_dim = vlm.hidden // vlm.heads  # the prefix LM's head size
        layer_cls, norm_cls, rotary_cls = EXPERT_LAYERS[vlm.lm_arch]
        self.layers = nn.ModuleList(
            layer_cls(self.lm_config, layer_idx=i) for i in range(vlm.layers)
        )
        if "past_key_values" not in inspect.signature(self.layers[0].get_submodule("self_attn").forward).parameters:
            raise RuntimeError(
                "The action expert needs transformers >= 4.56 (attention layers that take "
                f"`past_key_values`); this is transformers {transformers.__version__}."
            )
        self.norm = norm_cls(config.expert_hidden, eps=self.lm_config.rms_norm_eps)
        self.rotary = rotary_cls(self.lm_config)

    def forward(self, tokens: torch.Tensor, prefix: EncodedPrefix) -> torch.Tensor:
        """tokens (B, T, E) -> (B, T, E); `prefix` holds B envs' prefixes."""
        batch, length = tokens.shape[:2]
        position_ids = prefix.length[:, None] + torch.arange(length, device=tokens.device)
        # additive mask (B, 1, T, P + T): real prefix tokens and all suffix tokens are visible
        visible = torch.cat(
            (prefix.mask.bool(), prefix.mask.new_ones(batch, length, dtype=torch.bool)), dim=1
        )
        mask = torch.zeros(visible.shape, dtype=tokens.dtype, device=tokens.device)
        mask = mask.masked_fill(~visible, torch.finfo(tokens.dtype).min)
        mask = mask[:, None, None].expand(-1, 1, length, -1)
        position_embeddings = self.rotary(tokens, position_ids)
        hidden = tokens
        for layer in self.layers:
            hidden = layer(
                hidden,
                attention_mask=mask,
                position_ids=position_ids,
                past_key_values=prefix.kv,
                position_embeddings=position_embeddings,
            )
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return self.norm(hidden)


@register_policy
class FlowVLAPolicy(VLAStateInputs, Policy):
    """pi0-shaped flow-matching VLA with Flow-Noise / Flow-SDE log-probs and a value head."""

    kind = "flow_vla"
    config_class = FlowVLAConfig
    backbone_name = "prefix"
    runtime_fields = ("stochastic_steps", "noise_level", "detach_critic")
    adapter_fields = (*VLAStateInputs.adapter_fields, "likelihood")

    def __init__(self, config: FlowVLAConfig, tokenizer: PreTrainedTokenizerFast | None = None):
        super().__init__(config)
        if config.action_dim <= 0:
            raise ValueError("FlowVLAConfig needs action_dim (build it with policies.make_policy).")
        if config.state_keys and config.state_dim <= 0:
            raise ValueError(
                f"FlowVLAConfig has state_keys {config.state_keys} but no state_dim (build it with policies.make_policy)."
            )
        if config.num_steps < 1 or config.chunk_size < 1:
            raise ValueError(
                f"num_steps ({config.num_steps}) and chunk_size ({config.chunk_size}) must be >= 1."
            )
        self.stochastic = self._stochastic_steps(config)
        low, high = config.noise_std_range
        if not 0 < low <= high:
            raise ValueError(
                f"noise_std_range must satisfy 0 < min <= max; got {config.noise_std_range}."
            )
        if config.noise_level <= 0:
            raise ValueError(f"noise_level must be > 0; got {config.noise_level}.")
        state_dim = config.state_dim if config.state_keys else 0
        tokenizer = tokenizer or train_tokenizer(task_instructions(), config.vlm.text_vocab_size)
        self.prefix = VisionLanguagePrefix(config.vlm, state_dim, tokenizer=tokenizer)
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))

        width, actions = config.expert_hidden, config.action_dim
        self.expert = ActionExpert(config)
        self.action_in = nn.Linear(actions, width)
        self.action_time_in = nn.Linear(2 * width, width)
        self.action_time_out = nn.Linear(width, width)
        self.velocity_head = nn.Linear(width, actions)
        self.noise_head = self.make_noise_head() if config.likelihood == "noise" else None
        self.value_head = nn.Sequential(
            nn.Linear(config.vlm.hidden, config.value_hidden),
            nn.Tanh(),
            nn.Linear(config.value_hidden, 1),
        )
        self.add_adapters(config.lora_rank, config.lora_alpha, config.critic, config.critic_keys, config.critic_dim)

    def make_noise_head(self) -> nn.Sequential:
        """Flow-Noise's std network on the expert's hidden states (its output is squashed into
        `noise_std_range`)."""
        c = self.config
        return nn.Sequential(nn.Linear(c.expert_hidden, c.noise_hidden), nn.Tanh(), nn.Linear(c.noise_hidden, c.action_dim))

    def add_adapters(
        self, lora_rank: int = 0, lora_alpha: float = 16.0, critic: str = "head",
        critic_keys: tuple[str, ...] = (), critic_dim: int = 0, likelihood: str | None = None,
    ) -> None:
        """The VLA adapters (LoRA, a state critic) and, with `likelihood: noise` on a Flow-SDE
        policy (an SFT checkpoint), Flow-Noise's std network, as pi_RL adds it for RL: its last
        layer zero, so every std starts at the middle of `noise_std_range`. A Flow-Noise policy
        keeps its learned std whatever a recipe's default says."""
        super().add_adapters(lora_rank, lora_alpha, critic, critic_keys, critic_dim)
        if likelihood not in (None, "noise", "sde"):
            raise ValueError(f"policy.likelihood must be 'noise' (Flow-Noise) or 'sde' (Flow-SDE); got {likelihood!r}.")
        if likelihood == "noise" and self.noise_head is None:
            head = self.make_noise_head()
            last = cast(nn.Linear, head[2])
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.noise_head = head.to(self.velocity_head.weight.device)
            self.config = dataclasses.replace(self.config, likelihood="noise")

    @staticmethod
    def _stochastic_steps(config: FlowVLAConfig) -> frozenset[int]:
        if config.stochastic_steps == "all":
            return frozenset(range(config.num_steps))
        bad = [k for k in config.stochastic_steps if not 0 <= k < config.num_steps]
        if bad:
            raise ValueError(
                f"stochastic_steps {bad} are outside the {config.num_steps} denoising steps (valid: 0..{config.num_steps - 1})."
            )
        return frozenset(config.stochastic_steps)

    # ---- save / load -------------------------------------------------------------------------

    def save_files(self, directory) -> None:
        self.prefix.save_tokenizer(directory)

    @classmethod
    def build_for_folder(cls, config: FlowVLAConfig, directory) -> FlowVLAPolicy:
        return cls(config, tokenizer=load_tokenizer(directory))

    # ---- inputs ------------------------------------------------------------------------------

    def check_chunk(self, actions: torch.Tensor, name: str = "actions") -> None:
        expected = (self.config.chunk_size, self.config.action_dim)
        if actions.dim() != 3 or tuple(actions.shape[1:]) != expected:
            raise ValueError(
                f"{name} has shape {tuple(actions.shape)}; this flow VLA expects (N, chunk_size={expected[0]}, "
                f"action_dim={expected[1]})."
            )

    # ---- the network -------------------------------------------------------------------------

    def encode_prefix(self, obs: dict[str, Any]) -> EncodedPrefix:
        """Run the VLM over the prefix once: its per-layer keys/values and pooled features."""
        if "task" not in obs:
            raise KeyError(
                "Observation lacks 'task' (one instruction string per env): the flow VLA's prefix reads it."
            )
        prefix = self.prefix(obs, self.normalized_state(obs))
        out = self.prefix.language_model.model(
            inputs_embeds=prefix.embeds,
            attention_mask=prefix.attention_mask,
            position_ids=prefix.position_ids,
            use_cache=True,
        )
        keys, values = cache_tensors(out.past_key_values)
        mask = prefix.attention_mask
        weights = mask.to(out.last_hidden_state.dtype)[..., None]
        features = (out.last_hidden_state * weights).sum(1) / weights.sum(1)
        return EncodedPrefix(PrefixKV(keys, values), mask, mask.sum(1), features)

    def velocity_field(
        self, prefix: EncodedPrefix, x: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The expert at noisy chunks x (B, T, A) and times t (B,), B a multiple of the prefix's
        N (env-major): velocity (B, T, A) and, for Flow-Noise, the learned std (B, T, A)."""
        prefix = prefix.repeated(x.shape[0] // prefix.mask.shape[0])
        width = self.config.expert_hidden
        time_features = time_embedding(t, width)[:, None].expand(-1, x.shape[1], -1)
        tokens = self.action_time_out(
            nn.functional.silu(
                self.action_time_in(torch.cat((self.action_in(x), time_features), dim=-1))
            )
        )
        hidden = self.expert(tokens, prefix)
        velocity = self.velocity_head(hidden)
        if self.noise_head is None:
            return velocity, None
        low, high = self.config.noise_std_range
        return velocity, low + (high - low) * torch.sigmoid(self.noise_head(hidden))

    # ---- the Policy contract -----------------------------------------------------------------

    def sample(
        self, obs: dict[str, Any], deterministic: bool, num_steps: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, EncodedPrefix]:
        """The chain (N, K+1, T, A) and its log-prob (N,) (0 when deterministic)."""
        prefix = self.encode_prefix(obs)
        n = prefix.mask.shape[0]
        noise = torch.randn(
            n, self.config.chunk_size, self.config.action_dim, device=prefix.features.device
        )
        stochastic = frozenset() if deterministic else self.stochastic
        chain, log_prob = sample_chain(
            partial(self.velocity_field, prefix),
            noise,
            num_steps or self.config.num_steps,
            stochastic,
            self.config.likelihood,
            self.config.noise_level,
        )
        return chain, log_prob, prefix

    @torch.no_grad()
    def act(self, obs: dict[str, Any], deterministic: bool = False) -> PolicyOutput:
        chain, log_prob, prefix = self.sample(obs, deterministic)
        return PolicyOutput(
            action=chain[:, -1].clamp(-1.0, 1.0),
            log_prob=log_prob,
            value=self.critic_value(prefix.features, obs),
            extras={"chain": chain},
        )

    @torch.no_grad()
    def sample_chunks(self, obs: dict[str, Any], samples: int) -> torch.Tensor:
        """(N, K, T, A) K chunks per observation from the flow's own distribution: K initial
        noises through the ODE (no Flow-SDE/Flow-Noise steps: those widen the distribution for
        RL's log-probs, and distilling their samples drifts the flow, as PA-RL would); the
        prefix is encoded once and its keys/values repeated, the K chains run as one batch."""
        prefix = self.encode_prefix(obs).repeated(samples)
        n = prefix.mask.shape[0]
        noise = torch.randn(n, self.config.chunk_size, self.config.action_dim, device=prefix.features.device)
        chain, _ = sample_chain(partial(self.velocity_field, prefix), noise, self.config.num_steps, frozenset(),
                                self.config.likelihood, self.config.noise_level)
        return chain[:, -1].clamp(-1.0, 1.0).view(-1, samples, self.config.chunk_size, self.config.action_dim)

    def evaluate(self, obs, actions, extras):
        elements, entropy, value = self.evaluate_elements(obs, actions, extras)
        return elements.flatten(1).sum(1), entropy, value

    def evaluate_elements(self, obs, actions, extras):
        """The chain's log-prob per action element (N, T, A) (summed over the stochastic
        steps), its entropy (N,) and the value (N,)."""
        self.check_chunk(actions)
        if "chain" not in extras:
            raise KeyError(
                "extras lacks 'chain' (N, K+1, T, A): pass the extras that act() returned."
            )
        chain = extras["chain"]
        expected = (
            actions.shape[0],
            self.config.num_steps + 1,
            self.config.chunk_size,
            self.config.action_dim,
        )
        if tuple(chain.shape) != expected:
            raise ValueError(
                f"extras['chain'] has shape {tuple(chain.shape)}; expected (N, K+1, T, A) = {expected}."
            )
        prefix = self.encode_prefix(obs)
        elements, entropy = chain_log_prob(
            partial(self.velocity_field, prefix),
            chain,
            self.config.num_steps,
            self.stochastic,
            self.config.likelihood,
            self.config.noise_level,
        )
        return elements, entropy, self.critic_value(prefix.features, obs)

    def value(self, obs: dict[str, Any]) -> torch.Tensor:
        """(N,) state value of an observation batch."""
        return self.critic_value(self.encode_prefix(obs).features, obs)

    def supervised_loss(
        self, obs: dict[str, Any], actions: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Flow matching: x_t = t * noise + (1 - t) * actions, t ~ Beta, target noise - actions."""
        self.check_chunk(actions)
        prefix = self.encode_prefix(obs)
        n = actions.shape[0]
        alpha, beta = self.config.time_beta
        beta_dist = torch.distributions.Beta(
            torch.tensor(alpha, device=actions.device), torch.tensor(beta, device=actions.device)
        )
        t = beta_dist.sample((n,)) * 0.999 + 0.001
        noise = torch.randn_like(actions)
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
        velocity, _ = self.velocity_field(prefix, x_t, t)
        loss = nn.functional.mse_loss(velocity, noise - actions)
        return loss, {"flow_mse": float(loss.detach())}


@torch.no_grad()
def sampling_cost(
    policy: FlowVLAPolicy,
    obs: dict[str, Any],
    num_steps: tuple[int, ...] = (1, 2, 5, 10, 20),
    repeats: int = 3,
) -> dict[str, Any]:
    """Wall-clock cost of one action chunk for a batch `obs` against the number of Euler steps K.

    Returns {"num_envs", "prefix_s": the VLM prefix alone, "chunk_s": {K: prefix + K expert
    steps, deterministic}, "per_step_s": the slope}: medians of `repeats` runs after a warm-up.
    """
    device = next(policy.parameters()).device

    def timed(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    prefix_s = timed(lambda: policy.encode_prefix(obs))
    chunk_s = {k: timed(partial(policy.sample, obs, True, k)) for k in num_steps}
    ks = sorted(chunk_s)
    per_step = (
        (chunk_s[ks[-1]] - chunk_s[ks[0]]) / (ks[-1] - ks[0]) if len(ks) > 1 else float("nan")
    )
    n = len(obs["task"])
    return {"num_envs": n, "prefix_s": prefix_s, "chunk_s": chunk_s, "per_step_s": per_step}
