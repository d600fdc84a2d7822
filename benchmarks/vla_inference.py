"""VLA inference: action chunks per second for a batch of envs, AR VLA decoding vs `generate`.

For N = 64 envs (PickCube camera observations, one batch reused) and chunks of T actions of
A = 7 dimensions (T*A tokens), actions/s (N * T / wall time, from observation to action chunk) of

- ``ours``: `ARVLAPolicy.act`: the prefix, then exactly T*A tokens with static key/value
  buffers, sampling among the 256 action ids, per-token log-probs and the value;
- ``ours_greedy``: the same, ``deterministic=True`` (argmax);
- ``generate`` / ``generate_greedy``: the same prefix, then `transformers`' batched
  ``language_model.generate(inputs_embeds=..., attention_mask=...)`` with ``max_new_tokens =
  min_new_tokens = T*A`` (``do_sample=True`` / ``False``), tokens mapped to bin centres:
  the same model and batch, over the whole vocabulary, no log-probs or value;
- ``per_env_loop``: ``generate_greedy`` called once per env (batch 1), on `--loop-envs` envs.

A check first (not timed): `generate` restricted to the action ids by a logits processor
emits the same greedy tokens as ``ours_greedy``, so both decode the same model from the same
prefix. Methods are timed in alternating blocks (best block each), so that load from other
processes hits all alike.

Then the flow-matching VLA's sampling cost per chunk on the same batch against the number
of Euler steps K (`policies.vla.flow.sampling_cost`).

Prints a table, writes benchmarks/results/vla_inference.json (``--quick``: fewer blocks, a
shorter per-env loop, vla_inference_quick.json) and ends with
``RESULT batched_vs_generate=<min(ours / generate, ours_greedy / generate_greedy)>``.

    python benchmarks/vla_inference.py [--quick] [--chunk T] [--envs N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import GenerationMixin, LogitsProcessor, LogitsProcessorList  # noqa: E402

import sims  # noqa: E402
from benchmarks.common import machine_info, write_result  # noqa: E402
from policies import make_policy  # noqa: E402
from policies.vla.autoregressive import ARVLAConfig, ARVLAPolicy  # noqa: E402
from policies.vla.flow import FlowVLAConfig, FlowVLAPolicy, sampling_cost  # noqa: E402

TASK = "PickCube"


class ActionIdsOnly(LogitsProcessor):
    """Mask every id outside [begin, end): `generate` restricted to the action tokens."""

    def __init__(self, begin: int, end: int):
        self.begin, self.end = begin, end

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        masked = torch.full_like(scores, float("-inf"))
        masked[:, self.begin : self.end] = scores[:, self.begin : self.end]
        return masked


def generate_actions(
    policy: ARVLAPolicy, obs: dict, sample: bool, processors: LogitsProcessorList | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`transformers`' batched generate on the policy's LM and prefix: (tokens (N, T*A), actions (N, T, A))."""
    steps = policy.config.chunk_size * policy.config.action_dim
    prefix = policy.prefix(obs)
    lm = policy.backbone.language_model
    assert isinstance(lm, GenerationMixin)  # a causal LM (AutoModelForCausalLM) generates
    tokens = lm.generate(  # type: ignore[misc]  # transformers' self-type Protocol
        inputs_embeds=prefix.embeds,
        attention_mask=prefix.attention_mask,
        max_new_tokens=steps,
        min_new_tokens=steps,
        do_sample=sample,
        top_k=None,
        pad_token_id=policy.backbone.tokenizer.pad_token_id,
        logits_processor=processors,
    )[:, -steps:]
    tokenizer = policy.action_tokenizer
    action = tokenizer.decode(tokens.clamp(tokenizer.begin, tokenizer.end - 1))
    return tokens, action.view(tokens.shape[0], policy.config.chunk_size, policy.config.action_dim)


def per_env_loop(policy: ARVLAPolicy, obs: dict, envs: int) -> None:
    for i in range(envs):
        one = {k: (v[i : i + 1] if k != "task" else v[i : i + 1]) for k, v in obs.items()}
        generate_actions(policy, one, sample=False)


def bench_flow_sampling(obs: dict, action_dim: int, chunk: int, quick: bool) -> dict:
    """Sampling cost per chunk of the tiny flow-matching VLA (`policies/vla/flow.py`) on the
    same batch, against the number of Euler steps K (deterministic ODE; the stochastic modes
    add only a Gaussian draw per step)."""
    policy = make_policy(FlowVLAConfig(chunk_size=chunk), obs, action_dim).eval()
    assert isinstance(policy, FlowVLAPolicy)  # the kind FlowVLAConfig names
    steps = (1, 5, 10) if quick else (1, 2, 5, 10, 20)
    with torch.no_grad():
        cost = sampling_cost(policy, obs, num_steps=steps, repeats=1 if quick else 3)
    print(f"flow VLA ({sum(p.numel() for p in policy.parameters()) / 1e6:.2f}M parameters), N = {cost['num_envs']}: "
          f"prefix {1000 * cost['prefix_s']:.0f} ms; " + ", ".join(
              f"K={k}: {1000 * s:.0f} ms/chunk" for k, s in cost["chunk_s"].items()) +
          f"; {1000 * cost['per_step_s']:.1f} ms per extra step")
    return {"K": list(cost["chunk_s"]), "chunk_ms": [1000 * s for s in cost["chunk_s"].values()],
            "prefix_ms": 1000 * cost["prefix_s"], "per_step_ms": 1000 * cost["per_step_s"],
            "parameters": sum(p.numel() for p in policy.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer blocks and a shorter per-env loop (< 2 min)"
    )
    parser.add_argument("--envs", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=4, help="T actions per chunk (T*7 tokens)")
    parser.add_argument(
        "--blocks", type=int, default=0, help="timed blocks per method (default 5, quick 2)"
    )
    parser.add_argument(
        "--loop-envs", type=int, default=0, help="envs in the per-env loop (default 16, quick 2)"
    )
    args = parser.parse_args()
    blocks = args.blocks or (2 if args.quick else 5)
    calls = 1 if args.quick else 3
    loop_envs = args.loop_envs or (2 if args.quick else 16)
    machine = machine_info()
    torch.manual_seed(0)

    env = sims.make(TASK, num_envs=args.envs, obs_mode="rgb", cameras=("front",), seed=0)
    obs = env.reset(seed=0)
    policy = make_policy(ARVLAConfig(chunk_size=args.chunk), obs, env.action_dim).eval()
    assert isinstance(policy, ARVLAPolicy)  # the kind ARVLAConfig names
    env.close()
    n, steps = args.envs, args.chunk * policy.config.action_dim
    parameters = {
        "total": sum(p.numel() for p in policy.parameters()),
        "vision": sum(p.numel() for p in policy.backbone.vision.parameters()),
        "language_model": sum(p.numel() for p in policy.backbone.language_model.parameters()),
    }

    with torch.no_grad():
        tokenizer = policy.action_tokenizer
        restricted = LogitsProcessorList([ActionIdsOnly(tokenizer.begin, tokenizer.end)])
        ours_tokens = policy.act(obs, deterministic=True).extras["tokens"]
        generated, _ = generate_actions(policy, obs, sample=False, processors=restricted)
        tokens_match = bool((ours_tokens == generated).all())
        print(f"greedy tokens of ours == generate restricted to the action ids: {tokens_match}")

        methods = {
            "ours": lambda: policy.act(obs),
            "ours_greedy": lambda: policy.act(obs, deterministic=True),
            "generate": lambda: generate_actions(policy, obs, sample=True),
            "generate_greedy": lambda: generate_actions(policy, obs, sample=False),
            "prefix_forward": lambda: policy.value(obs),  # vision tower + LM over the prefix
        }
        best = dict.fromkeys(methods, float("inf"))
        for method in methods.values():  # warm-up
            method()
        for _ in range(blocks):
            for name, method in methods.items():
                start = time.perf_counter()
                for _ in range(calls):
                    method()
                best[name] = min(best[name], (time.perf_counter() - start) / calls)
        start = time.perf_counter()
        per_env_loop(policy, obs, loop_envs)
        loop_seconds_per_env = (time.perf_counter() - start) / loop_envs

    rates = {
        name: n * args.chunk / seconds for name, seconds in best.items() if name != "prefix_forward"
    }
    rates["per_env_loop"] = args.chunk / loop_seconds_per_env
    ratios = {
        "ours_vs_generate": rates["ours"] / rates["generate"],
        "greedy_vs_generate_greedy": rates["ours_greedy"] / rates["generate_greedy"],
        "generate_greedy_vs_per_env_loop": rates["generate_greedy"] / rates["per_env_loop"],
    }
    result = min(ratios["ours_vs_generate"], ratios["greedy_vs_generate_greedy"])

    print(
        f"\nN = {n} envs, T = {args.chunk} (x {policy.config.action_dim} = {steps} tokens), "
        f"{parameters['total'] / 1e6:.2f}M parameters, torch threads {torch.get_num_threads()}"
    )
    print(f"{'method':<18}{'actions/s':>12}{'ms/chunk':>12}")
    for name, rate in rates.items():
        print(
            f"{name:<18}{rate:>12.0f}{1000 * n * args.chunk / rate if name != 'per_env_loop' else 1000 * args.chunk * n / rate:>12.1f}"
        )
    print(
        f"prefix forward (vision + LM over P = {policy.backbone.length} tokens): {1000 * best['prefix_forward']:.1f} ms per batch"
    )
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.2f}x")

    data = {
        "task": TASK,
        "num_envs": n,
        "chunk_size": args.chunk,
        "action_dim": policy.config.action_dim,
        "tokens_per_chunk": steps,
        "prefix_length": policy.backbone.length,
        "parameters": parameters,
        "torch_threads": torch.get_num_threads(),
        "blocks": blocks,
        "calls_per_block": calls,
        "loop_envs": loop_envs,
        "greedy_tokens_match_generate": tokens_match,
        "actions_per_s": rates,
        "prefix_forward_ms": 1000 * best["prefix_forward"],
        "ratios": ratios,
        "batched_vs_generate": result,
    }
    data["flow_sampling"] = bench_flow_sampling(obs, policy.config.action_dim, args.chunk, args.quick)
    path = write_result("vla_inference_quick" if args.quick else "vla_inference", data, machine)
    print(f"wrote {path}")
    print(f"RESULT batched_vs_generate={result:.2f}")


if __name__ == "__main__":
    main()
