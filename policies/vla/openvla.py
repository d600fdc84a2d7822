"""Load a folder in OpenVLA's Hugging Face checkpoint layout into an `ARVLAPolicy`.

The layout (openvla/openvla, `prismatic/extern/hf/` and
`vla-scripts/extern/convert_openvla_weights_to_hf.py`): ``config.json`` of an ``OpenVLAConfig``
(``model_type: "openvla"``, ``vision_backbone_id``, ``use_fused_vision_backbone``,
``timm_model_ids``, ``image_sizes``, ``text_config`` (a Llama config), ``pad_token_id``,
``pad_to_multiple_of``, ``n_action_bins``, ``norm_stats``), the weights in ``model.safetensors``
or shards listed by ``model.safetensors.index.json``, and the Llama-2 tokenizer
(``tokenizer.json``). Weight names: ``vision_backbone.featurizer.*`` (a timm ViT),
``vision_backbone.fused_featurizer.*`` (the second tower of a fused backbone),
``projector.fc1/fc2[/fc3].*``, ``language_model.model.*``, ``language_model.lm_head.weight``.

What maps, exactly (same computation as OpenVLA's `forward`):

- the language model: ``language_model.*`` are a ``LlamaForCausalLM``'s own names; its config
  (sizes, ``rms_norm_eps``, ``rope_theta``, the padded vocabulary of 32064) is read from
  ``text_config``;
- the action tokens: ids ``[32000 - 256, 32000)`` (``text_config.vocab_size -
  pad_to_multiple_of`` is OpenVLA's ``vocab_size`` for de-tokenisation), bin centres as in
  ``predict_action``;
- a single SigLIP tower (``vision_backbone_id`` ``siglip-vit-so400m[-384px]``, not fused):
  timm's ``patch_embed``, ``pos_embed``, ``blocks.i.{norm1, attn.qkv, attn.proj, norm2,
  mlp.fc1, mlp.fc2}`` and ``norm`` become our `SiglipVisionModel`'s (``qkv`` split into q, k,
  v); features are the second-to-last block's output without the final norm, as Prismatic's
  ``get_intermediate_layers(n={depth - 2})`` (``vision_feature_layer = -2``); pixels scaled to
  [-1, 1] (SigLIP's mean = std = 0.5). timm's ``attn_pool`` (the MAP head) is never run by
  OpenVLA and is dropped;
- the 2-layer GELU projector (``fc1``, ``fc2``) of a non-fused backbone;
- the prompt: ``In: What action should the robot take to {task}?\\nOut:`` with OpenVLA's
  extra token 29871 after it (when the tokenizer has it as "▁"), and the image patches right
  after ``<s>``: [<s> | patches | prompt]. Our batch is left-padded, positions count real tokens.

What does not map:

- **OpenVLA-7B itself** (``dinosiglip-vit-so-224px``, ``use_fused_vision_backbone: true``): its
  DINOv2 ViT-L/14 tower (register tokens, LayerScale, ImageNet normalisation, channel-stacked
  6-channel input) has no counterpart here, nor the 3-layer projector over the concatenated
  2176-wide features. Loading it raises `NotImplementedError`; its language model alone would
  map as above. CLIP and DINOv2-only backbones are refused likewise;
- the head count of the vision tower is not in the checkpoint (timm derives it from the model
  id): known SigLIP ids are tabled in `SIGLIP_HEADS`, others need ``vision_heads=``;
- ``norm_stats`` are returned, not applied: our actions are in [-1, 1] env units, so
  un-normalising with a dataset's q01/q99 is the caller's choice;
- image resizing (``resize-naive`` / ``letterbox`` to 224): observations must already have
  the tower's size; the value head and state normalisation are new (OpenVLA has neither);
  weights are loaded in float32 (OpenVLA stores bfloat16); chunks are T = 1, as OpenVLA's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from policies.vla.autoregressive import ARVLAConfig, ARVLAPolicy
from policies.vla.backbone import TOKENIZER_FILE, VLMConfig

OPENVLA_PROMPT = "In: What action should the robot take to {task}?\nOut:"
SIGLIP_HEADS = {"vit_so400m_patch14_siglip_224": 16, "vit_so400m_patch14_siglip_384": 16}
VISION = "vision_backbone.featurizer."
TIMM_TO_SIGLIP = {  # timm ViT block names -> transformers' SiglipEncoderLayer names
    "norm1": "layer_norm1",
    "attn.proj": "self_attn.out_proj",
    "norm2": "layer_norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def is_openvla_folder(directory: str | Path) -> bool:
    config = Path(directory) / "config.json"
    if not config.is_file():
        return False
    return json.loads(config.read_text()).get("model_type") == "openvla"


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors`` or of the shards its index lists, in float32."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(
            f"Neither model.safetensors nor model.safetensors.index.json in {str(directory)!r}."
        )
    state: dict[str, torch.Tensor] = {}
    for name in files:
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {index.name} lists it.")
        state.update({k: v.float() for k, v in load_file(path).items()})
    return state


def vision_config(
    raw: dict[str, Any], state: dict[str, torch.Tensor], vision_heads: int | None
) -> dict[str, Any]:
    """Our SigLIP tower's sizes, read off the timm weights (and the head count off the timm id)."""
    if raw.get("use_fused_vision_backbone"):
        raise NotImplementedError(
            f"{raw.get('vision_backbone_id')!r} is a fused backbone ({raw.get('timm_model_ids')}): its DINOv2 tower "
            "has no counterpart in this platform's single SigLIP tower (see policies/vla/openvla.py)."
        )
    timm_id = raw.get("timm_model_ids", ["?"])[0]
    if "siglip" not in timm_id:
        raise NotImplementedError(
            f"Vision backbone {timm_id!r} is not a SigLIP ViT; only SigLIP towers map."
        )
    heads = vision_heads or SIGLIP_HEADS.get(timm_id)
    if heads is None:
        raise ValueError(
            f"The head count of {timm_id!r} is not in the checkpoint: pass vision_heads=."
        )
    patch = state[VISION + "patch_embed.proj.weight"]  # (D, 3, p, p)
    depth = 1 + max(
        int(m.group(1)) for k in state if (m := re.match(re.escape(VISION) + r"blocks\.(\d+)\.", k))
    )
    size = raw["image_sizes"][0]
    return dict(
        image_size=(size, size),
        patch_size=patch.shape[-1],
        vision_hidden=patch.shape[0],
        vision_layers=depth,
        vision_heads=heads,
        vision_intermediate=state[VISION + "blocks.0.mlp.fc1.weight"].shape[0],
        vision_feature_layer=-2,
    )


def map_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenVLA names -> this policy's state-dict names (``attn_pool`` dropped)."""
    mapped: dict[str, torch.Tensor] = {}
    unknown = []
    for name, tensor in state.items():
        if name.startswith("language_model."):
            mapped["backbone." + name] = tensor
        elif m := re.fullmatch(r"projector\.fc([12])\.(weight|bias)", name):
            mapped[f"backbone.projector.{2 * (int(m.group(1)) - 1)}.{m.group(2)}"] = tensor
        elif name.startswith(VISION):
            key = name[len(VISION) :]
            tower = "backbone.vision."
            if key.startswith("attn_pool."):
                continue
            if key in ("patch_embed.proj.weight", "patch_embed.proj.bias"):
                mapped[tower + "embeddings.patch_embedding." + key.rsplit(".", 1)[1]] = tensor
            elif key == "pos_embed":
                mapped[tower + "embeddings.position_embedding.weight"] = tensor[0]
            elif key in ("norm.weight", "norm.bias"):
                mapped[tower + "post_layernorm." + key.rsplit(".", 1)[1]] = tensor
            elif m := re.fullmatch(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", key):
                layer = f"{tower}encoder.layers.{m.group(1)}.self_attn."
                for part, chunk in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                    mapped[f"{layer}{part}_proj.{m.group(2)}"] = chunk
            elif (m := re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key)) and m.group(
                2
            ) in TIMM_TO_SIGLIP:
                mapped[
                    f"{tower}encoder.layers.{m.group(1)}.{TIMM_TO_SIGLIP[m.group(2)]}.{m.group(3)}"
                ] = tensor
            else:
                unknown.append(name)
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(
            f"OpenVLA weights with no counterpart here: {unknown[:8]} ({len(unknown)} in all)."
        )
    return mapped


def load_openvla(
    directory: str | Path,
    vision_heads: int | None = None,
    action_dim: int | None = None,
    unnorm_key: str | None = None,
    camera: str = "front",
    max_text_tokens: int = 48,
) -> tuple[ARVLAPolicy, dict[str, Any]]:
    """An `ARVLAPolicy` (T = 1, no state token, a new value head) from an OpenVLA-layout folder,
    and the checkpoint's ``norm_stats``. `action_dim` defaults to the length of the
    ``norm_stats[unnorm_key]["action"]["q01"]`` (the only dataset when `unnorm_key` is None)."""
    directory = Path(directory)
    config_path, tokenizer_path = directory / "config.json", directory / TOKENIZER_FILE
    for path in (config_path, tokenizer_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: an OpenVLA checkpoint folder holds {path.name}."
            )
    raw = json.loads(config_path.read_text())
    if raw.get("model_type") != "openvla":
        raise ValueError(f"{config_path} has model_type {raw.get('model_type')!r}, not 'openvla'.")
    text = raw["text_config"]
    if text.get("model_type", "llama") not in ("llama", "qwen2"):
        raise NotImplementedError(
            f"Language model {text.get('model_type')!r}: only Llama and Qwen2 map."
        )
    state = read_weights(directory)
    norm_stats = raw.get("norm_stats") or {}
    if action_dim is None:
        keys = [unnorm_key] if unnorm_key else list(norm_stats)
        if len(keys) != 1 or keys[0] not in norm_stats:
            raise ValueError(
                f"Pick the dataset of the action statistics: unnorm_key= one of {list(norm_stats)}, or action_dim=."
            )
        action_dim = len(norm_stats[keys[0]]["action"]["q01"])

    backend = Tokenizer.from_file(str(tokenizer_path))
    pad = backend.id_to_token(raw.get("pad_token_id", 32000)) or "<PAD>"
    special = (pad, "<s>", "</s>")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=special[0],
        bos_token=special[1],
        eos_token=special[2],
        padding_side="left",
    )
    heads = text["num_attention_heads"]
    vlm = VLMConfig(
        cameras=(camera,),
        **vision_config(raw, state, vision_heads),
        lm_arch=text.get("model_type", "llama"),
        hidden=text["hidden_size"],
        layers=text["num_hidden_layers"],
        heads=heads,
        kv_heads=text.get("num_key_value_heads") or heads,
        intermediate=text["intermediate_size"],
        text_vocab_size=len(tokenizer),
        max_text_tokens=max_text_tokens,
        rope_theta=text.get("rope_theta", 10000.0),
        rms_norm_eps=text.get("rms_norm_eps", 1e-6),
    )
    vocab = text["vocab_size"]
    config = ARVLAConfig(
        vlm=vlm,
        action_dim=action_dim,
        chunk_size=1,
        state_keys=(),
        n_bins=raw.get("n_action_bins", 256),
        prompt_template=OPENVLA_PROMPT,
        lm_vocab_size=vocab,
        action_token_end=vocab - raw.get("pad_to_multiple_of", 0),
        image_after_first_token=True,
        prompt_suffix_ids=(29871,) if backend.id_to_token(29871) == "▁" else (),
        special_tokens=special,
    )
    policy = ARVLAPolicy(config, tokenizer=tokenizer)
    missing, unexpected = policy.load_state_dict(map_weights(state), strict=False)
    missing = [k for k in missing if not k.startswith(("value_head.", "state_"))]
    if missing or unexpected:
        raise ValueError(
            f"{directory} does not fit: missing {missing[:8]}, unexpected {unexpected[:8]}."
        )
    return policy, norm_stats
