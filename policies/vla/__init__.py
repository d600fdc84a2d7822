"""Vision-language-action models: the shared vision-language prefix, the autoregressive VLA
(OpenVLA-style action tokens) and the flow-matching VLA (pi0-style action expert)."""

from policies.vla import autoregressive, flow  # noqa: F401  (registration)
