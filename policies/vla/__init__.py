"""Vision-language-action models: the shared vision-language prefix, the autoregressive VLA
(OpenVLA-style action tokens) and the flow-matching VLA (pi0-style action expert)."""
