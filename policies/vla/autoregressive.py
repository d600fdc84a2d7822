"""Autoregressive VLA (OpenVLA-style): action chunks as tokens of a causal LM.

One decision for N envs:

    prefix  = [left-padded instruction | image patches per camera | state token]   (N, P, H)
    tokens  = a_{1,1} .. a_{1,A}  a_{2,1} .. a_{T,A}                               (N, T*A)

Each action dimension is one of 256 uniform bins on the last 256 token ids (OpenVLA's
convention: `action_tokenizer.py`). Decoding samples only among those ids, at `temperature`:

    pi(a_k | prefix, a_<k) = softmax(W_act h_k / temperature)      W_act: the lm_head rows of the 256 ids

A deterministic decision (`act(deterministic=True)`) reads each token out of that same
distribution by `decoding`: "argmax" (OpenVLA's greedy decoding) or "expected", the bin nearest
the distribution's mean, sum_b pi(b) c_b over the bin centres c_b (the regression readout of a
histogram loss such as HL-Gauss, whose targets spread over neighbouring bins); the chosen token
is fed back as the next step's input either way.

The log-prob of a chunk is the sum of its T*A token log-probs (`evaluate_elements` keeps
them per token, (N, T, A), for per-token and per-action credit in RL). The value head reads h_0, the last hidden state before
the action tokens (the one that predicts the first of them).

`act` builds the prefix once, pre-fills the LM's key/value cache with it, and emits exactly
T*A tokens with static shapes: one key/value buffer of P + T*A positions per layer, written in
place, and only the 256 action rows of the LM head per step (`decoder="static"`, for Llama and
Qwen2 layers). `decoder="hf"` runs each step through the LM's own forward with a DynamicCache;
both agree with `evaluate`'s single teacher-forced pass.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import DynamicCache, PreTrainedTokenizerFast

from policies.base import Policy, PolicyConfig, PolicyOutput, register_policy
from policies.mlp import mlp
from policies.vla.action_tokenizer import ActionTokenizer
from policies.vla.backbone import (
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    Prefix,
    VisionLanguagePrefix,
    VLAStateInputs,
    VLMConfig,
    task_instructions,
    train_tokenizer,
)

if TYPE_CHECKING:
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaModel
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2Model


@dataclasses.dataclass
class ARVLAConfig(PolicyConfig):
    kind: str = "ar_vla"
    vlm: VLMConfig = dataclasses.field(default_factory=VLMConfig)
    action_dim: int = 0  # filled from the env when 0
    chunk_size: int = 1  # T actions per decision, T * action_dim tokens
    state_keys: tuple[str, ...] = ("observation.state",)  # () for no state token
    state_dim: int = 0  # filled from the observation when 0
    detach_critic: bool = False  # the value head learns on the backbone's features without changing them
    critic: str = "head"  # "head": value head on the backbone; "state": a separate MLP on the state features
    critic_keys: tuple[str, ...] = ()  # the state critic's inputs when not state_keys (may be privileged)
    critic_dim: int = 0  # filled from the env when critic_keys are given
    lora_rank: int = 0  # > 0: LoRA adapters on the backbone, which is then frozen (RL fine-tuning)
    lora_alpha: float = 16.0
    temperature: float = 1.0  # of the sampling distribution (and of the recorded log-probs)
    decoding: str = "argmax"  # deterministic readout of each token: "argmax" or "expected" (the mean's bin)
    value_hidden_sizes: tuple[int, ...] = (64,)
    n_bins: int = 256
    # SFT targets: 0 = one-hot bins (OpenVLA); > 0 = a Gaussian of this std, in bin widths, around
    # the demonstrated action, integrated over each bin (HL-Gauss): neighbouring bins share
    # the target, so the classifier learns that bins are ordered.
    label_sigma_bins: float = 0.0
    prompt_template: str = (
        "{task}"  # OpenVLA: "In: What action should the robot take to {task}?\nOut:"
    )
    # OpenVLA's checkpoint layout (set by policies/vla/openvla.py); 0 / False / () mean this
    # platform's own layout: 256 action ids appended after the text vocabulary, images after
    # the text.
    lm_vocab_size: int = 0  # rows of the LM's embedding (OpenVLA-7B: 32064)
    action_token_end: int = 0  # one past the last action id (OpenVLA-7B: 32000)
    image_after_first_token: bool = False  # Prismatic: [<s> | patches | prompt]
    prompt_suffix_ids: tuple[int, ...] = ()  # OpenVLA appends token 29871 ("") after "Out:"
    special_tokens: tuple[str, str, str] = SPECIAL_TOKENS  # pad, bos, eos of tokenizer.json


@register_policy
class ARVLAPolicy(VLAStateInputs, Policy):
    """SigLIP tower + projector + causal LM; a chunk of T actions as T*A bin tokens."""

    kind = "ar_vla"
    config_class = ARVLAConfig
    backbone_name = "backbone"
    runtime_fields = ("temperature", "decoding", "detach_critic")
    bin_values: torch.Tensor  # (n_bins,) buffer: the action each action id decodes to

    def __init__(self, config: ARVLAConfig, tokenizer: PreTrainedTokenizerFast | None = None):
        super().__init__(config)
        if config.action_dim <= 0:
            raise ValueError("ARVLAConfig needs action_dim (build it with policies.make_policy).")
        if config.state_keys and config.state_dim <= 0:
            raise ValueError(
                f"ARVLAConfig has state_keys {config.state_keys} but no state_dim (use make_policy)."
            )
        if config.chunk_size < 1 or config.temperature <= 0 or config.n_bins < 2:
            raise ValueError(
                f"Need chunk_size >= 1, temperature > 0 and n_bins >= 2; got {config}."
            )
        if config.decoding not in ("argmax", "expected"):
            raise ValueError(f"decoding must be 'argmax' or 'expected', got {config.decoding!r}.")
        tokenizer = tokenizer or train_tokenizer(task_instructions(), config.vlm.text_vocab_size)
        extra = config.n_bins if not config.lm_vocab_size else config.lm_vocab_size - len(tokenizer)
        if extra < 0:
            raise ValueError(
                f"lm_vocab_size {config.lm_vocab_size} is smaller than the tokenizer ({len(tokenizer)})."
            )
        self.backbone = VisionLanguagePrefix(
            config.vlm, config.state_dim if config.state_keys else 0, extra, tokenizer
        )
        end = config.action_token_end or self.backbone.vocab_size
        if not config.n_bins <= end <= self.backbone.vocab_size:
            raise ValueError(
                f"Action ids [{end - config.n_bins}, {end}) fall outside the LM vocabulary ({self.backbone.vocab_size})."
            )
        self.action_tokenizer = ActionTokenizer(end, config.n_bins)
        # the action each of the n_bins action ids decodes to, by its position among them
        self.register_buffer("bin_values", self.action_tokenizer.decode(self.action_tokenizer.token(
            torch.arange(config.n_bins))), persistent=False)
        self.value_head = mlp(
            [config.vlm.hidden, *config.value_hidden_sizes, 1], "tanh", out_gain=1.0
        )
        state_dim = config.state_dim if config.state_keys else 0
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))
        self.decoder: Literal["static", "hf"] = (
            "static" if self._static_decoding_supported() else "hf"
        )
        self.add_adapters(config.lora_rank, config.lora_alpha, config.critic, config.critic_keys, config.critic_dim)

    # ---- save / load -------------------------------------------------------------------------

    def save_files(self, directory) -> None:
        self.backbone.save_tokenizer(directory)

    @classmethod
    def build_for_folder(cls, config: ARVLAConfig, directory) -> ARVLAPolicy:
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: a VLA folder holds its tokenizer next to its weights."
            )
        pad, bos, eos = config.special_tokens
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer.from_file(str(path)),
            pad_token=pad,
            bos_token=bos,
            eos_token=eos,
            padding_side="left",
        )
        return cls(config, tokenizer=tokenizer)

    @classmethod
    def from_pretrained(cls, directory: str | Path, overrides: dict[str, Any] | None = None) -> Policy:
        """A folder saved by `save_pretrained`, or one in OpenVLA's checkpoint layout (`openvla.py`)."""
        from policies.vla import openvla

        if openvla.is_openvla_folder(directory):
            if overrides:
                raise ValueError(f"An OpenVLA folder loads without config overrides; got {overrides} "
                                 "(openvla.load_openvla takes its own arguments).")
            return openvla.load_openvla(directory)[0]
        return super().from_pretrained(directory, overrides)

    # ---- inputs ------------------------------------------------------------------------------

    def prefix(self, obs: dict[str, Any]) -> Prefix:
        """The (N, P, H) prefix of an observation batch (equal P for all envs)."""
        tasks = obs.get("task")
        if not isinstance(tasks, (list, tuple)) or not all(isinstance(t, str) for t in tasks):
            raise TypeError(
                f"obs['task'] must be a list of instruction strings; got {type(tasks).__name__}."
            )
        texts = [self.config.prompt_template.format(task=task) for task in tasks]
        state = self.normalized_state(obs)
        if not (self.config.image_after_first_token or self.config.prompt_suffix_ids):
            return self.backbone({**obs, "task": texts}, state)
        return self._prismatic_prefix(obs, texts, state)

    def _prismatic_prefix(
        self, obs: dict[str, Any], texts: list[str], state: torch.Tensor | None
    ) -> Prefix:
        """[pads | first text token (<s>) | image patches | rest of the prompt | suffix ids | state],
        OpenVLA's order, left-padded so that every env's prefix ends at the same position."""
        backbone, suffix = self.backbone, self.config.prompt_suffix_ids
        images = backbone.images(obs)
        device = images[0].device
        batch = backbone.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=backbone.cfg.max_text_tokens - len(suffix),
            return_tensors="pt",
        )
        ids, text_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        n = ids.shape[0]
        if suffix:
            ids = torch.cat((ids, torch.tensor(suffix, device=device).expand(n, -1)), dim=1)
            text_mask = torch.cat((text_mask, torch.ones_like(ids[:, -len(suffix) :])), dim=1)
        text = backbone.language_model.get_input_embeddings()(ids)
        patches = torch.cat([backbone.embed_images(image) for image in images], dim=1)
        length, num_patches = text.shape[1], patches.shape[1]
        pads = (length - text_mask.sum(1, keepdim=True)).long()  # (N, 1)
        j = torch.arange(length + num_patches, device=device).expand(n, -1)
        source = torch.where(
            j <= pads,
            j,
            torch.where(j <= pads + num_patches, length + j - pads - 1, j - num_patches),
        )
        embeds = torch.cat((text, patches), dim=1).gather(
            1, source[..., None].expand(-1, -1, text.shape[-1])
        )
        mask = (j >= pads).long()
        if state is not None:
            assert backbone.state_proj is not None  # built whenever state_keys give a state
            embeds = torch.cat((embeds, backbone.state_proj(state)[:, None]), dim=1)
            mask = torch.cat((mask, torch.ones_like(mask[:, :1])), dim=1)
        return Prefix(embeds, mask, (mask.cumsum(1) - 1).clamp_min(0))

    # ---- the action distribution -------------------------------------------------------------

    def action_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Untempered logits (..., n_bins) over the action ids from final hidden states (..., H)."""
        head = self.backbone.language_model.get_output_embeddings()
        begin, end = self.action_tokenizer.begin, self.action_tokenizer.end
        logits = hidden @ head.weight[begin:end].T
        return logits if head.bias is None else logits + head.bias[begin:end]

    def _sample(
        self, hidden: torch.Tensor, deterministic: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Bin index (N,) and its log-prob (N,) under the tempered, restricted distribution."""
        logits = self.action_logits(hidden) / self.config.temperature
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        noise = None
        if not deterministic:  # Gumbel-max: argmax(log p + Gumbel noise) ~ Categorical(p)
            noise = -torch.log(-torch.log(torch.rand_like(log_probs).clamp_min(1e-20)))
        index = self._choose(log_probs, noise)
        return index, log_probs.gather(-1, index[:, None])[:, 0]

    def _choose(self, logits: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """Bin index (N,) from tempered logits (N, n_bins): a sample when Gumbel `noise` is
        given, else the deterministic readout that `decoding` names."""
        if noise is not None:
            return (logits + noise).argmax(-1)
        if self.config.decoding == "argmax":
            return logits.argmax(-1)
        mean = torch.softmax(logits.float(), dim=-1) @ self.bin_values
        return (mean[:, None] - self.bin_values).abs().argmin(-1)

    @torch.no_grad()
    def act(self, obs: dict[str, Any], deterministic: bool = False) -> PolicyOutput:
        prefix = self.prefix(obs)
        decode = self._decode_static if self.decoder == "static" else self._decode_hf
        index, token_log_prob, hidden = decode(prefix, deterministic)
        tokens = self.action_tokenizer.token(index)
        n = tokens.shape[0]
        action = self.bin_values[index]
        return PolicyOutput(
            action=action.view(n, self.config.chunk_size, self.config.action_dim),
            log_prob=token_log_prob.sum(-1),
            value=self.critic_value(hidden, obs),
            extras={"tokens": tokens, "token_log_prob": token_log_prob},
        )

    @torch.no_grad()
    def sample_chunks(self, obs: dict[str, Any], samples: int) -> torch.Tensor:
        """(N, K, T, A) K sampled chunks per observation: the prefix is embedded once and
        repeated, the K decodings run as one batch."""
        prefix = self.prefix(obs)
        if samples > 1:
            prefix = Prefix(*(x.repeat_interleave(samples, 0) for x in (prefix.embeds, prefix.attention_mask,
                                                                         prefix.position_ids)))
        decode = self._decode_static if self.decoder == "static" else self._decode_hf
        index, _, _ = decode(prefix, False)
        action = self.bin_values[index]
        return action.view(-1, samples, self.config.chunk_size, self.config.action_dim)

    def _prefill(self, prefix: Prefix) -> tuple[torch.Tensor, DynamicCache]:
        lm = self.backbone.language_model
        cache = DynamicCache(config=lm.config)
        out = lm.model(
            inputs_embeds=prefix.embeds,
            attention_mask=prefix.attention_mask,
            position_ids=prefix.position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        return out.last_hidden_state[:, -1], cache

    def _decode_hf(
        self, prefix: Prefix, deterministic: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reference decoder: each token through the LM's own forward and DynamicCache."""
        steps = self.config.chunk_size * self.config.action_dim
        lm = self.backbone.language_model
        hidden, cache = self._prefill(prefix)
        first_hidden = hidden
        mask, position = prefix.attention_mask, prefix.position_ids[:, -1:]
        indices, log_probs = [], []
        for step in range(steps):
            index, log_prob = self._sample(hidden, deterministic)
            indices.append(index)
            log_probs.append(log_prob)
            if step == steps - 1:
                break
            mask = torch.cat((mask, torch.ones_like(mask[:, :1])), dim=1)
            position = position + 1
            embeds = lm.get_input_embeddings()(self.action_tokenizer.token(index))[:, None]
            out = lm.model(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=position,
                past_key_values=cache,
                use_cache=True,
            )
            hidden = out.last_hidden_state[:, -1]
        return torch.stack(indices, 1), torch.stack(log_probs, 1), first_hidden

    def _static_decoding_supported(self) -> bool:
        lm_config = self.backbone.language_model.config
        layer_types = set(getattr(lm_config, "layer_types", None) or ["full_attention"])
        return (
            lm_config.model_type in ("llama", "qwen2")
            and layer_types == {"full_attention"}
            and not getattr(lm_config, "use_sliding_window", False)
        )

    def _decode_static(
        self, prefix: Prefix, deterministic: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode exactly T*A tokens with per-layer key/value buffers of P + T*A - 1 positions.

        One pass over the prefix fills the first P positions (causal attention, pads seen by
        nobody but themselves); then one token per step is written in place and attends over the
        whole buffer under an additive mask of the positions filled so far. Static shapes and
        nothing per step but the layer math: rotary tables, Gumbel noise and the restricted,
        tempered LM head are prepared once, and the log-probs are taken once at the end.
        Returns the bin indices (N, T*A), their log-probs (N, T*A) and h_0 (N, H)."""
        steps = self.config.chunk_size * self.config.action_dim
        lm_config = self.backbone.language_model.config
        # _static_decoding_supported: a Llama or Qwen2 LM, whose model holds its decoder layers
        model = cast("LlamaModel | Qwen2Model", self.backbone.language_model.model)
        layers = cast("list[LlamaDecoderLayer | Qwen2DecoderLayer]", list(model.layers))
        n, length, device, dtype = (
            prefix.embeds.shape[0],
            prefix.length,
            prefix.embeds.device,
            prefix.embeds.dtype,
        )
        total = length + steps - 1  # the last token is sampled, never fed back
        kv_heads = lm_config.num_key_value_heads
        head_dim = layers[0].self_attn.head_dim
        buffers = [
            (
                prefix.embeds.new_zeros(n, kv_heads, total, head_dim),
                prefix.embeds.new_zeros(n, kv_heads, total, head_dim),
            )
            for _ in layers
        ]
        positions = torch.cat(
            (
                prefix.position_ids,
                prefix.position_ids[:, -1:] + torch.arange(1, steps, device=device),
            ),
            dim=1,
        )
        cos, sin = model.rotary_emb(prefix.embeds, positions)  # (N, P + steps - 1, head_dim)
        half = head_dim // 2
        sin = torch.cat(
            (-sin[..., :half], sin[..., half:]), dim=-1
        )  # rotate_half(x) * sin == roll(x, half) * this
        # Prefill: query i sees keys j <= i that are real tokens (a pad sees only itself).
        query = torch.arange(length, device=device)[:, None]
        key = torch.arange(total, device=device)
        real = torch.cat(
            (
                prefix.attention_mask.bool(),
                torch.zeros(n, steps - 1, dtype=torch.bool, device=device),
            ),
            dim=1,
        )
        visible = (key <= query) & (real[:, None, :] | (key == query))  # (N, P, total)
        prefill_bias = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill_(
            ~visible, float("-inf")
        )
        x = prefix.embeds
        for layer, (k, v) in zip(layers, buffers, strict=True):
            x = self._layer(
                layer, x, cos[:, :length], sin[:, :length], k, v, 0, prefill_bias[:, None]
            )
        hidden = first_hidden = F.rms_norm(
            x[:, -1], x.shape[-1:], model.norm.weight, model.norm.variance_epsilon
        )
        # Decode: one additive mask row per env (N, kv_heads, 1, total), opened one slot per step.
        bias = torch.zeros(n, kv_heads, 1, total, dtype=dtype, device=device).masked_fill_(
            ~real[:, None, None], float("-inf")
        )
        head = self.backbone.language_model.get_output_embeddings()
        begin, end = self.action_tokenizer.begin, self.action_tokenizer.end
        head_weight = head.weight[begin:end] / self.config.temperature  # (n_bins, H), tempered
        head_bias = None if head.bias is None else head.bias[begin:end] / self.config.temperature
        action_embeddings = model.embed_tokens.weight[begin:end]  # (n_bins, H): the input embeddings
        noise = None
        if not deterministic:  # Gumbel-max: argmax(logits + Gumbel noise) ~ softmax(logits)
            uniform = torch.rand(steps, n, self.config.n_bins, device=device).clamp_min_(1e-20)
            noise = -torch.log(-torch.log(uniform))
        logits = [F.linear(hidden, head_weight, head_bias)]
        index = self._choose(logits[0], None if noise is None else noise[0])
        indices = [index]
        for step in range(steps - 1):
            slot = length + step
            bias[..., slot] = 0.0
            x = action_embeddings[index][:, None]  # (N, 1, H)
            rotary_cos, rotary_sin = cos[:, slot : slot + 1], sin[:, slot : slot + 1]
            for layer, (k, v) in zip(layers, buffers, strict=True):
                x = self._layer(layer, x, rotary_cos, rotary_sin, k, v, slot, bias)
            hidden = F.rms_norm(
                x[:, 0], x.shape[-1:], model.norm.weight, model.norm.variance_epsilon
            )
            logits.append(F.linear(hidden, head_weight, head_bias))
            index = self._choose(logits[-1], None if noise is None else noise[step + 1])
            indices.append(index)
        chosen = torch.stack(indices, 1)
        log_probs = torch.log_softmax(torch.stack(logits, 1).float(), dim=-1)
        return chosen, log_probs.gather(-1, chosen[..., None])[..., 0], first_hidden

    @staticmethod
    def _layer(
        layer: LlamaDecoderLayer | Qwen2DecoderLayer,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        start: int,
        bias: torch.Tensor,
    ) -> torch.Tensor:
        """One Llama/Qwen2 decoder layer on S tokens per env at positions start..start+S-1.

        x: (N, S, H); cos, sin: (N, S, head_dim) (sin signed for `roll`); k, v: (N, kv_heads,
        total, head_dim), written at those positions; bias: additive attention mask, (N, 1, S,
        total) for S > 1, (N, kv_heads, 1, total) for one token."""
        attn, mlp_ = layer.self_attn, layer.mlp
        n, s = x.shape[:2]
        kv_heads, total, head_dim = k.shape[1:]
        h = F.rms_norm(
            x, x.shape[-1:], layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon
        )
        q = attn.q_proj(h).view(n, s, -1, head_dim)
        key = attn.k_proj(h).view(n, s, kv_heads, head_dim)
        cos, sin = cos[:, :, None], sin[:, :, None]
        q = q * cos + q.roll(head_dim // 2, -1) * sin
        k[:, :, start : start + s] = (key * cos + key.roll(head_dim // 2, -1) * sin).transpose(1, 2)
        v[:, :, start : start + s] = attn.v_proj(h).view(n, s, kv_heads, head_dim).transpose(1, 2)
        groups = q.shape[2] // kv_heads  # query head kv * groups + g reads key/value head kv
        if s == 1:
            scores = torch.baddbmm(
                bias.view(n * kv_heads, 1, total),
                q.view(n * kv_heads, groups, head_dim),
                k.view(n * kv_heads, total, head_dim).transpose(1, 2),
                alpha=attn.scaling,
            )
            out = torch.bmm(scores.softmax(-1), v.view(n * kv_heads, total, head_dim)).view(
                n, 1, -1
            )
        else:
            q = q.view(n, s, kv_heads, groups, head_dim).permute(
                0, 2, 3, 1, 4
            )  # (N, kv, groups, S, head_dim)
            scores = (
                torch.matmul(q, k[:, :, None].transpose(-1, -2)) * attn.scaling + bias[:, :, None]
            )
            out = (
                torch.matmul(scores.softmax(-1), v[:, :, None])
                .permute(0, 3, 1, 2, 4)
                .reshape(n, s, -1)
            )
        x = x + attn.o_proj(out)
        h = F.rms_norm(
            x,
            x.shape[-1:],
            layer.post_attention_layernorm.weight,
            layer.post_attention_layernorm.variance_epsilon,
        )
        return x + mlp_.down_proj(mlp_.act_fn(mlp_.gate_proj(h)) * mlp_.up_proj(h))

    # ---- recomputation, per-token log-probs, SFT ------------------------------------------

    def _tokens(
        self, actions: torch.Tensor, extras: dict[str, torch.Tensor] | None
    ) -> torch.Tensor:
        expected = (self.config.chunk_size, self.config.action_dim)
        if actions.ndim != 3 or tuple(actions.shape[1:]) != expected:
            raise ValueError(
                f"actions have shape {tuple(actions.shape)}; this VLA emits (N, chunk_size={expected[0]}, "
                f"action_dim={expected[1]}): does the env's action dimension match?"
            )
        if extras and "tokens" in extras:
            return extras["tokens"]
        return self.action_tokenizer.encode(actions).reshape(actions.shape[0], -1)

    def teacher_forced(
        self, obs: dict[str, Any], tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One LM pass over prefix + tokens[:, :-1]: untempered action logits (N, T*A, n_bins) at
        the positions that predict each token, and h_0 (N, H) for the value head."""
        prefix = self.prefix(obs)
        lm = self.backbone.language_model
        n, steps = tokens.shape
        fed = lm.get_input_embeddings()(tokens[:, :-1])
        embeds = torch.cat((prefix.embeds, fed), dim=1)
        mask = torch.cat((prefix.attention_mask, torch.ones_like(tokens[:, :-1])), dim=1)
        positions = torch.cat(
            (
                prefix.position_ids,
                prefix.position_ids[:, -1:] + torch.arange(1, steps, device=tokens.device),
            ),
            dim=1,
        )
        hidden = lm.model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions
        ).last_hidden_state
        hidden = hidden[:, prefix.length - 1 :]
        return self.action_logits(hidden), hidden[:, 0]

    def evaluate(self, obs, actions, extras):
        elements, entropy, value = self.evaluate_elements(obs, actions, extras)
        return elements.flatten(1).sum(1), entropy, value

    def evaluate_elements(self, obs, actions, extras):
        """Per-token log-probs (N, T, A) (tempered, restricted to the action ids), the summed
        token entropy (N,) and the value (N,)."""
        tokens = self._tokens(actions, extras)
        logits, first_hidden = self.teacher_forced(obs, tokens)
        log_probs = torch.log_softmax(logits.float() / self.config.temperature, dim=-1)
        token_log_prob = log_probs.gather(-1, self.action_tokenizer.index(tokens)[..., None])[
            ..., 0
        ]
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        elements = token_log_prob.view(tokens.shape[0], self.config.chunk_size, self.config.action_dim)
        return elements, entropy.sum(-1), self.critic_value(first_hidden, obs)

    def value(self, obs: dict[str, Any]) -> torch.Tensor:
        prefix = self.prefix(obs)
        lm = self.backbone.language_model
        hidden = lm.model(
            inputs_embeds=prefix.embeds,
            attention_mask=prefix.attention_mask,
            position_ids=prefix.position_ids,
        ).last_hidden_state
        return self.critic_value(hidden[:, -1], obs)

    def supervised_loss(
        self, obs: dict[str, Any], actions: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Token cross-entropy of the demonstrated actions' bins (teacher forcing), over the action
        ids at temperature 1: the policy's own likelihood (OpenVLA trains over the whole vocabulary)."""
        tokens = self._tokens(actions, None)
        logits, _ = self.teacher_forced(obs, tokens)
        target = self.action_tokenizer.index(tokens)
        if self.config.label_sigma_bins > 0:
            soft = self.gaussian_bin_targets(actions.flatten(1), self.config.label_sigma_bins)
            loss = F.cross_entropy(logits.float().flatten(0, 1), soft.flatten(0, 1))
        else:
            loss = F.cross_entropy(logits.float().flatten(0, 1), target.flatten())
        with torch.no_grad():
            predicted = logits.argmax(-1)
            accuracy = (predicted == target).float().mean()
            error = (self.bin_values[predicted] - actions.flatten(1)).abs().mean()
        return loss, {
            "token_ce": loss.item(),
            "token_accuracy": accuracy.item(),
            "action_l1": error.item(),
        }

    def gaussian_bin_targets(self, actions: torch.Tensor, sigma_bins: float) -> torch.Tensor:
        """(..., n_bins) probabilities over the action ids: the mass of N(a, (sigma * width)^2),
        clipped to the action range, on each bin interval [edge_k, edge_k+1), which is decoded by
        index n_bins - 1 - k; a = max exactly gets index 0 alone, as `ActionTokenizer.encode`
        gives it."""
        tokenizer = self.action_tokenizer
        edges = tokenizer.edges.to(actions.device, torch.float32)
        a = actions.float().clamp(tokenizer.min_action, tokenizer.max_action)[..., None]
        cdf = torch.special.ndtr((edges - a) / (sigma_bins * tokenizer.bin_width))
        cdf[..., 0], cdf[..., -1] = 0.0, 1.0  # the mass beyond either end goes to the end bins
        interval_mass = cdf[..., 1:] - cdf[..., :-1]  # (..., n_bins - 1), interval k
        soft = torch.cat((torch.zeros_like(interval_mass[..., :1]), interval_mass.flip(-1)), dim=-1)
        # a = max exactly (a gripper's "open") encodes to index 0: keep that target one-hot, so
        # that greedy decoding emits the very token that teacher forcing fed during training.
        at_max = (actions >= tokenizer.max_action)[..., None]
        return torch.where(at_max, F.one_hot(torch.zeros_like(actions, dtype=torch.long), tokenizer.n_bins).float(), soft)
