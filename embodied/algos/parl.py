"""Policy-agnostic RL (PA-RL, Mark et al., 2024): improve any policy class with a critic by
turning its samples into better actions and distilling them with the policy's own
supervised loss (MSE for a Gaussian MLP, flow matching for the flow VLA, token
cross-entropy for the AR VLA). Top to bottom, for a batch of states s:

    1. propose:   a_1..a_K ~ pi(. | s)                       (K samples, (B, K, A))
    2. global:    keep the `keep` best by min_e Q_e(s, a_k)
    3. local:     `steps` steps of gradient ascent on min_e Q_e(s, a) from each kept
                  action, a <- clip(a + lr * grad_a Q, -1, 1)
    4. pick:      a* = the best of the refined actions by Q
    5. distil:    L = policy.supervised_loss(s, a*)

`algo o2o` uses it as its actor update with `actor_update: parl` (Cal-QL or IQL critic).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

QFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (features (B, F), action (B, A)) -> (E, B)


def pessimistic_q(q_function: QFunction, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """min_e Q_e of K actions per state: features (B, F), actions (B, K, A) -> (B, K)."""
    b, k, a = actions.shape
    q = q_function(features.repeat_interleave(k, 0), actions.reshape(b * k, a))
    return q.min(0).values.view(b, k)


def improve_actions(q_function: QFunction, features: torch.Tensor, candidates: torch.Tensor, keep: int = 4,
                    steps: int = 5, step_size: float = 0.03) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Steps 2-4: the best refined action per state (B, A) from candidates (B, K, A), with the
    mean Q of the sampled best and of the result."""
    features = features.detach()
    with torch.no_grad():
        q = pessimistic_q(q_function, features, candidates)
        top = q.topk(min(keep, candidates.shape[1]), dim=1).indices
        kept = candidates.gather(1, top[..., None].expand(-1, -1, candidates.shape[2]))
        sampled_best = q.max(1).values
    actions = kept.clone()
    with torch.enable_grad():  # also when acting, under no_grad
        for _ in range(steps):
            actions.requires_grad_(True)
            value = pessimistic_q(q_function, features, actions).sum()
            (grad,) = torch.autograd.grad(value, actions)
            actions = (actions.detach() + step_size * grad).clamp(-1, 1)
    with torch.no_grad():
        final = pessimistic_q(q_function, features, actions)
        best = final.argmax(1)
        chosen = actions[torch.arange(actions.shape[0]), best]
    return chosen, {"q_sampled_best": sampled_best.mean(), "q_improved": final.max(1).values.mean()}
