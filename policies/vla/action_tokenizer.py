"""OpenVLA's action tokenizer: 256 uniform bins per action dimension on the last 256 token ids.

The convention is OpenVLA's (`prismatic/vla/action_tokenizer.py`), reproduced exactly:

- the bin *edges* are ``linspace(-1, 1, 256)`` (256 edges, 255 intervals) and the values a
  token decodes to are the 255 interval centres;
- an action `a` (clipped to [-1, 1]) gets ``i = digitize(a, edges)`` in [1, 256] (the edge
  ``i - 1`` at or below `a`, NumPy's ``right=False``) and the token id ``end - i``, where `end`
  is one past the last action id (OpenVLA: ``tokenizer.vocab_size``, 32000 for Llama-2). So
  the *largest* action takes the *smallest* id: a = -1 -> end - 1, a = +1 -> end - 256;
- a token decodes to ``centres[clip(end - id - 1, 0, 254)]``; i = 256 (only a = +1 exactly)
  shares the last interval's centre with i = 255.

A round trip is therefore within half a bin width (1 / 255). The policy samples over the 256
ids ``[end - 256, end)`` only; `index` is a token's position in that range (0..255).
"""

from __future__ import annotations

import numpy as np
import torch


class ActionTokenizer:
    """Continuous actions in [min_action, max_action] <-> token ids in [end - n_bins, end)."""

    def __init__(
        self, end: int, n_bins: int = 256, min_action: float = -1.0, max_action: float = 1.0
    ):
        if end < n_bins:
            raise ValueError(
                f"Action token ids end at {end}, fewer than the {n_bins} bins they need."
            )
        self.end, self.n_bins = end, n_bins
        self.min_action, self.max_action = min_action, max_action
        # NumPy's float64 linspace itself (torch's rounds some edges differently), so that
        # digitize agrees with OpenVLA's exactly at the edges.
        self.edges = torch.from_numpy(np.linspace(min_action, max_action, n_bins))
        self.centres = ((self.edges[:-1] + self.edges[1:]) / 2).float()

    @property
    def begin(self) -> int:
        """The first action token id: the action ids are ``range(begin, end)``."""
        return self.end - self.n_bins

    @property
    def bin_width(self) -> float:
        return (self.max_action - self.min_action) / (self.n_bins - 1)

    def encode(self, action: torch.Tensor) -> torch.Tensor:
        """Token ids (long, same shape) of `action` (any shape), clipped to the action range."""
        clipped = action.detach().double().clamp(self.min_action, self.max_action)
        digitized = torch.bucketize(
            clipped, self.edges.to(clipped.device), right=True
        )  # == np.digitize
        return self.end - digitized

    def decode(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Bin-centre actions (float32, same shape) of action token ids."""
        bin_index = (self.end - token_ids - 1).clamp(0, self.n_bins - 2)
        return self.centres.to(token_ids.device)[bin_index]

    def index(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Position 0..n_bins-1 of action token ids among the action ids."""
        return token_ids - self.begin

    def token(self, index: torch.Tensor) -> torch.Tensor:
        """Action token ids of positions 0..n_bins-1 among the action ids."""
        return index + self.begin
