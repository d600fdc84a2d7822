"""The vision-language prefix both VLA families share: a SigLIP vision tower, a projector, and
a causal LM (Llama or Qwen2 architecture) from `transformers`, sized by config.

A prefix of N envs is the token sequence

    [pad ... pad | instruction tokens | image patches per camera | state token]

with the instruction left-padded to `max_text_tokens`, so every env's prefix has the same
length P and ends at the same position: whatever follows (action tokens, an action expert's
suffix) is aligned across the batch, with static shapes. `attention_mask` is 0 on the pads
and `position_ids` count only real tokens.

The language tokenizer is a byte-level BPE trained here on the task instructions (nothing is
fetched from a hub) and saved next to the weights as `tokenizer.json`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from policies.base import FeatureSpec
from policies.mlp import concat_statistics, flat_observation, mlp
from policies.normalizer import RunningNormalizer

TOKENIZER_FILE = "tokenizer.json"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")


@dataclasses.dataclass
class VLMConfig:
    """Sizes of the vision tower and the language model. The defaults make a CPU-sized model
    (~0.3M parameters); real sizes are a matter of config (e.g. SigLIP-so400m + Qwen2-0.5B)."""

    cameras: tuple[str, ...] = ("front",)
    image_size: tuple[int, int] = (64, 64)  # H, W
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    vision_intermediate: int = 128
    lm_arch: Literal["llama", "qwen2"] = "llama"
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    text_vocab_size: int = 512  # BPE vocabulary trained on the instructions (incl. 256 bytes)
    max_text_tokens: int = 16
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6  # Llama-2 / Vicuna checkpoints use 1e-5
    # -1: the tower's last_hidden_state (after its final LayerNorm); -k: hidden_states[-k],
    # before that norm (Prismatic/OpenVLA take the second-to-last block's output: -2).
    vision_feature_layer: int = -1


def task_instructions() -> list[str]:
    """Every phrasing of every registered task's instruction: the tokenizer's training text."""
    from sims.tasks import TASKS

    return [text for name in sorted(TASKS) for text in TASKS[name].instructions]


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts` (deterministic for the same texts): any
    string encodes, unseen words fall back to bytes."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return wrap_tokenizer(tokenizer)


def wrap_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    pad, bos, eos = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=pad, bos_token=bos, eos_token=eos, padding_side="left"
    )


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a VLA folder holds its tokenizer next to its weights.")
    return wrap_tokenizer(Tokenizer.from_file(str(path)))


def language_model_config(cfg: VLMConfig, vocab_size: int) -> PretrainedConfig:
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        rms_norm_eps=cfg.rms_norm_eps,
        attn_implementation="sdpa",
    )
    # rope_theta: transformers >= 5 takes it as a legacy kwarg (into rope_parameters), which its
    # dataclass signatures leave out
    if cfg.lm_arch == "llama":
        return LlamaConfig(**common, rope_theta=cfg.rope_theta)  # type: ignore[call-arg]
    if cfg.lm_arch == "qwen2":
        return Qwen2Config(**common, rope_theta=cfg.rope_theta)  # type: ignore[call-arg]
    raise ValueError(f"Unknown lm_arch {cfg.lm_arch!r}; valid: llama, qwen2.")


@dataclasses.dataclass
class Prefix:
    """A batch of prefixes: embeddings (N, P, H), attention_mask (N, P), position_ids (N, P)."""

    embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor

    @property
    def length(self) -> int:
        return self.embeds.shape[1]


class VisionLanguagePrefix(nn.Module):
    """Images + instruction (+ proprioceptive state) -> LM input embeddings.

    `extra_tokens` ids are appended after the text vocabulary (the AR VLA's 256 action bins
    take the last 256 ids, as OpenVLA's do). `language_model` is a `*ForCausalLM`; the flow VLA
    uses only its `.model` and its per-layer key/value cache.
    """

    def __init__(
        self,
        cfg: VLMConfig,
        state_dim: int = 0,
        extra_tokens: int = 0,
        tokenizer: PreTrainedTokenizerFast | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer or train_tokenizer(task_instructions(), cfg.text_vocab_size)
        self.text_vocab_size = len(self.tokenizer)
        self.vocab_size = self.text_vocab_size + extra_tokens
        height, width = cfg.image_size
        if height != width:
            raise ValueError(f"image_size must be square for the SigLIP tower; got {cfg.image_size}.")
        if height % cfg.patch_size:
            raise ValueError(f"image_size {height} is not a multiple of patch_size {cfg.patch_size}.")
        self.vision = SiglipVisionModel(
            SiglipVisionConfig(
                hidden_size=cfg.vision_hidden,
                intermediate_size=cfg.vision_intermediate,
                num_hidden_layers=cfg.vision_layers,
                num_attention_heads=cfg.vision_heads,
                image_size=height,
                patch_size=cfg.patch_size,
                vision_use_head=False,
            )
        )
        self.projector = nn.Sequential(
            nn.Linear(cfg.vision_hidden, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.hidden)
        )
        self.language_model: PreTrainedModel = AutoModelForCausalLM.from_config(language_model_config(cfg, self.vocab_size))
        self.state_proj = nn.Linear(state_dim, cfg.hidden) if state_dim else None
        self.num_patches = (height // cfg.patch_size) ** 2

    @property
    def length(self) -> int:
        """P: the prefix length, the same for every env."""
        return self.cfg.max_text_tokens + self.num_patches * len(self.cfg.cameras) + int(self.state_proj is not None)

    @property
    def hidden_size(self) -> int:
        return self.cfg.hidden

    def tokenize(self, instructions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded (N, max_text_tokens) token ids and attention mask."""
        if not isinstance(instructions, (list, tuple)) or not all(isinstance(t, str) for t in instructions):
            raise TypeError(f"obs['task'] must be a list of instruction strings; got {type(instructions).__name__}.")
        batch = self.tokenizer(
            list(instructions), padding="max_length", truncation=True, max_length=self.cfg.max_text_tokens,
            return_tensors="pt",
        )
        return batch["input_ids"].to(device), batch["attention_mask"].to(device)

    def images(self, obs: dict[str, Any]) -> list[torch.Tensor]:
        """Each camera's uint8 (N, H, W, 3) image, checked against the config."""
        images = []
        for camera in self.cfg.cameras:
            key = f"observation.images.{camera}"
            if key not in obs:
                raise KeyError(f"Observation lacks {key!r}: make the env with obs_mode='rgb' and camera {camera!r}.")
            image = obs[key]
            if image.ndim != 4 or image.shape[-1] != 3 or tuple(image.shape[1:3]) != tuple(self.cfg.image_size):
                raise ValueError(
                    f"{key} has shape {tuple(image.shape)}; this VLA expects (N, {self.cfg.image_size[0]}, "
                    f"{self.cfg.image_size[1]}, 3) uint8."
                )
            images.append(image)
        return images

    def embed_images(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> (N, patches, hidden), SigLIP's [-1, 1] pixel scaling."""
        pixels = image.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if self.cfg.vision_feature_layer == -1:
            features = self.vision(pixel_values=pixels).last_hidden_state
        else:
            features = self.vision(pixel_values=pixels, output_hidden_states=True).hidden_states[self.cfg.vision_feature_layer]
        return self.projector(features)

    def forward(self, obs: dict[str, Any], state: torch.Tensor | None = None) -> Prefix:
        """The prefix of a batch of observations; `state` (N, state_dim) is the already
        normalised proprioceptive vector when the prefix has a state token."""
        images = self.images(obs)
        n = images[0].shape[0]
        device = images[0].device
        ids, text_mask = self.tokenize(obs["task"], device)
        if ids.shape[0] != n:
            raise ValueError(f"{ids.shape[0]} instructions for {n} images.")
        parts = [self.language_model.get_input_embeddings()(ids)]
        parts += [self.embed_images(image) for image in images]
        if self.state_proj is not None:
            if state is None:
                raise ValueError("This prefix has a state token: pass the normalised state.")
            parts.append(self.state_proj(state)[:, None])
        embeds = torch.cat(parts, dim=1)
        mask = torch.cat((text_mask, torch.ones(n, embeds.shape[1] - text_mask.shape[1], dtype=text_mask.dtype, device=device)), dim=1)
        position_ids = (mask.cumsum(dim=1) - 1).clamp_min(0)
        return Prefix(embeds, mask, position_ids)

    def save_tokenizer(self, directory: str | Path) -> None:
        self.tokenizer.backend_tokenizer.save(str(Path(directory) / TOKENIZER_FILE))


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "gate_proj", "up_proj", "down_proj", "fc1", "fc2")


def add_lora(module: nn.Module, rank: int, alpha: float) -> None:
    """Freeze `module` and add trainable LoRA adapters (peft) to its attention and MLP
    projections (the vision tower's and the LM's; not the LM head). B starts at zero, so the
    module computes exactly what it did before."""
    from peft import LoraConfig, inject_adapter_in_model

    for parameter in module.parameters():
        parameter.requires_grad_(False)
    # peft annotates lora_alpha as int; it is a float scale (alpha / rank) in its layers
    lora = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(LORA_TARGETS))  # type: ignore[arg-type]
    inject_adapter_in_model(lora, module)


class VLAStateInputs:
    """What the VLA policies share beyond their own heads: the proprioceptive state's frozen
    statistics (buffers `state_mean`, `state_std` on the policy), the features they read,
    declared from the config (`vlm`, `state_keys`, `state_dim`, `action_dim`, `chunk_size`),
    optional LoRA adapters on the vision-language backbone (`lora_rank`, `lora_alpha`), and the
    critic: a value head on the backbone's features or a separate MLP on the state (`critic`),
    which may read privileged simulator state the actor never sees (`critic_keys`)."""

    config: Any
    state_mean: torch.Tensor
    state_std: torch.Tensor
    value_head: nn.Module
    backbone_name: ClassVar[str]  # the attribute holding the VisionLanguagePrefix
    adapter_fields: ClassVar[tuple[str, ...]] = ("lora_rank", "lora_alpha", "critic", "critic_keys", "critic_dim")

    def normalized_state(self, obs: dict[str, Any]) -> torch.Tensor | None:
        """(N, state_dim) state features normalised by the frozen statistics, or None without
        `state_keys`."""
        if not self.config.state_keys:
            return None
        state = flat_observation(obs, self.config.state_keys)
        if state.shape[1] != self.state_mean.shape[0]:
            raise ValueError(
                f"State features {self.config.state_keys} have {state.shape[1]} values; this VLA was built for {self.state_mean.shape[0]}."
            )
        return (state - self.state_mean) / self.state_std

    def critic_value(self, features: torch.Tensor, obs: dict[str, Any]) -> torch.Tensor:
        """(N,) state value: the value head on (N, H) backbone features (with `detach_critic`
        the value loss trains the head only and leaves the backbone, which the actor reads,
        alone), or with `critic: state` a separate MLP on the normalised state features (the
        `critic_keys` under running statistics when given, else the actor's `state_keys`)."""
        if self.config.critic == "state":
            return self.state_critic(self.critic_inputs(obs))[:, 0]
        if self.config.detach_critic:
            features = features.detach()
        return self.value_head(features)[:, 0]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The vision-language backbone's trainable parameters (its LoRA adapters when enabled)."""
        return [p for p in getattr(self, self.backbone_name).parameters() if p.requires_grad]

    def critic_inputs(self, obs: dict[str, Any]) -> torch.Tensor:
        """(N, D) what the state critic reads: the `critic_keys` normalised by running statistics
        (`observe` updates them in training rollouts), or the actor's normalised state."""
        if not self.config.critic_keys:
            state = self.normalized_state(obs)
            if state is None:  # add_adapters builds no state critic without state_keys or critic_keys
                raise ValueError("The state critic reads the actor's state, and this VLA has no state_keys.")
            return state
        inputs = flat_observation(obs, self.config.critic_keys)
        if inputs.shape[1] != self.config.critic_dim:
            raise ValueError(
                f"Critic features {self.config.critic_keys} have {inputs.shape[1]} values; this critic was built for {self.config.critic_dim}."
            )
        return self.critic_normalizer(inputs)

    def observe(self, obs: dict[str, Any]) -> None:
        """Fold a training rollout's critic features into the critic's running statistics."""
        if self.config.critic == "state" and self.config.critic_keys:
            self.critic_normalizer.update(flat_observation(obs, self.config.critic_keys))

    def add_adapters(
        self, lora_rank: int = 0, lora_alpha: float = 16.0, critic: str = "head",
        critic_keys: tuple[str, ...] = (), critic_dim: int = 0,
    ) -> None:
        """LoRA on the backbone (rank 0: none) and a separate state critic (`critic: state`) on
        the actor's state or, asymmetric, on `critic_keys` (`critic_dim` values; privileged
        simulator state such as object poses is allowed: only training reads the critic).
        Called at construction from the config, and by a run that fine-tunes a saved policy
        with `policy.lora_rank` > 0 or `policy.critic: state`."""
        if critic not in ("head", "state"):
            raise ValueError(f"policy.critic must be 'head' (the value head on the backbone) or 'state'; got {critic!r}.")
        critic_keys = tuple(critic_keys)
        if critic_keys and critic != "state":
            raise ValueError(f"policy.critic_keys {critic_keys} are what the state critic reads; set policy.critic: state.")
        if critic == "state" and hasattr(self, "state_critic") and critic_keys != tuple(self.config.critic_keys):
            raise ValueError(
                f"This policy's state critic reads {tuple(self.config.critic_keys) or self.config.state_keys}; "
                f"cannot change it to {critic_keys or self.config.state_keys}."
            )
        if critic == "state" and not hasattr(self, "state_critic"):
            if critic_keys:
                if critic_dim <= 0:
                    raise ValueError(f"policy.critic_keys {critic_keys} need critic_dim (make_policy / the trainer fill it from the env).")
                self.critic_normalizer = RunningNormalizer(critic_dim)
                inputs = critic_dim
            elif self.config.state_keys:
                inputs = self.state_mean.shape[0]
            else:
                raise ValueError("policy.critic: state needs state_keys or critic_keys (the features the critic reads).")
            self.state_critic = mlp([inputs, 64, 64, 1], "tanh", out_gain=1.0)
            self.config = dataclasses.replace(self.config, critic="state", critic_keys=critic_keys, critic_dim=critic_dim)
        if lora_rank <= 0:
            return
        if getattr(self, "_lora_enabled", False):
            if (lora_rank, lora_alpha) != (self.config.lora_rank, self.config.lora_alpha):
                raise ValueError(f"This policy already has LoRA rank {self.config.lora_rank}; cannot change it to {lora_rank}.")
            return
        add_lora(getattr(self, self.backbone_name), lora_rank, lora_alpha)
        self.config = dataclasses.replace(self.config, lora_rank=lora_rank, lora_alpha=lora_alpha)
        self._lora_enabled = True

    def set_state_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Freeze the state normalisation to dataset statistics (mean, std: (state_dim,))."""
        if mean.shape != self.state_mean.shape or std.shape != self.state_std.shape:
            raise ValueError(
                f"State stats of shapes {tuple(mean.shape)}, {tuple(std.shape)}; expected {tuple(self.state_mean.shape)}."
            )
        self.state_mean.copy_(mean)
        self.state_std.copy_(std.clamp_min(1e-6))

    def set_normalization(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Freeze dataset statistics {feature key: (mean, std)} of the `state_keys` (SFT calls this)."""
        if self.config.state_keys:
            self.set_state_stats(*concat_statistics(stats, tuple(self.config.state_keys)))

    def feature_spec(self) -> FeatureSpec:
        """What this VLA reads and emits, for checking a dataset before SFT."""
        vlm = self.config.vlm
        images = {f"observation.images.{camera}": tuple(vlm.image_size) for camera in vlm.cameras}
        c = self.config
        return FeatureSpec(images, tuple(c.state_keys), c.state_dim, c.action_dim, c.chunk_size)
