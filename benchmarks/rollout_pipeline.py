"""VLA rollouts, collocated against pipelined: env steps/s at several env counts, one process.

The policy is the tiny flow VLA of configs/sft_pickcube_flow_vla.yaml (64x64 front + wrist
images, instruction, state token, chunks of 4, 10 Euler steps); the env PickCube with RGB
observations. Each env count runs `collect_rollout` in three placements, interleaved in
blocks so that load on the shared machine hits all alike:

  collocated    one batch: the policy decides for all envs, then the envs step
  collocated/2  two stages, one after the other (the pipelined mode's work without overlap)
  pipelined/2   two stages: a stage's physics and rendering run on its thread while the
                policy decides for the other stage

Where the time goes (collocated): inference (`policy.act`), rendering (the renderer's calls)
and physics (the rest of the env's steps), seconds per 1000 env steps, as a stacked bar plot
(benchmarks/results/rollout_pipeline.png) next to the pipelined wall time.

    python benchmarks/rollout_pipeline.py [--quick]

Writes benchmarks/results/rollout_pipeline.json (--quick: rollout_pipeline_quick.json) and
ends with ``RESULT pipelined_vs_collocated=<steps/s pipelined / collocated at the largest N>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402
import yaml  # noqa: E402

import sims  # noqa: E402
from benchmarks.common import RESULTS_DIR, machine_info, write_result  # noqa: E402
from embodied.config import from_dict  # noqa: E402
from embodied.runner import rollout as rollout_module  # noqa: E402
from embodied.runner.rollout import EpisodeTracker, collect_rollout  # noqa: E402
from embodied.runner.stages import StagedEnv  # noqa: E402
from policies import make_policy  # noqa: E402
from policies.vla.flow import FlowVLAConfig  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "sft_pickcube_flow_vla.yaml"
PLACEMENTS = {"collocated": (1, False), "collocated/2": (2, False), "pipelined/2": (2, True)}


class Timers:
    """Accumulated seconds per component, from wrapped callables."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        return timed


def build(num_envs: int, stages: int, pipelined: bool, timers: Timers | None):
    recipe = yaml.safe_load(RECIPE.read_text())
    env_cfg = sims.EnvConfig(task="PickCube", num_envs=num_envs, obs_mode="rgb", cameras=("front", "wrist"),
                             render=sims.RenderSettings(64, 64))
    env = StagedEnv(env_cfg, stages, pipelined) if stages > 1 else sims.make(env_cfg)
    obs = env.reset(seed=0)
    torch.manual_seed(0)
    policy = make_policy(from_dict(FlowVLAConfig, recipe["policy"]), obs, env.action_dim)
    if timers is not None:
        # this instance's act, timed (setattr: mypy rejects assigning to a method)
        setattr(policy, "act", timers.wrap("inference", policy.act))  # noqa: B010
        for stage in getattr(env, "stages", [env]):
            stage.renderer.render = timers.wrap("render", stage.renderer.render)
    return env, obs, policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two env counts, one block (< 2 min)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = machine_info()
    env_counts = (8, 16) if args.quick else (8, 16, 32, 64)
    blocks = 1 if args.quick else 3
    decisions = 4 if args.quick else 8
    results: dict[str, dict] = {}
    for n in env_counts:
        timers = Timers()
        built = {name: build(n, stages, pipelined, timers if name == "collocated" else None)
                 for name, (stages, pipelined) in PLACEMENTS.items()}
        env_time = Timers()
        original_run_chunk = rollout_module.run_chunk
        best = {name: float("inf") for name in PLACEMENTS}
        breakdown: dict[str, float] = {}
        for block in range(blocks + 1):  # block 0 warms up
            for name, (env, obs, policy) in built.items():
                timers.seconds.clear()
                env_time.seconds.clear()
                timed_env = name == "collocated"
                rollout_module.run_chunk = env_time.wrap("env", original_run_chunk) if timed_env else original_run_chunk
                start = time.perf_counter()
                with torch.no_grad():
                    _, obs, _ = collect_rollout(env, policy, obs, decisions, 0.99, EpisodeTracker(n, env.device))
                seconds = time.perf_counter() - start
                built[name] = (env, obs, policy)
                if block and seconds < best[name]:
                    best[name] = seconds
                    if timed_env:
                        breakdown = dict(timers.seconds, env=env_time.seconds["env"], wall=seconds)
        rollout_module.run_chunk = original_run_chunk
        steps = n * decisions * 4
        per_k = 1000.0 / steps
        results[str(n)] = {
            "env_steps": steps,
            "steps_per_s": {name: steps / s for name, s in best.items()},
            "collocated_seconds_per_1000_steps": {
                "inference": breakdown["inference"] * per_k,
                "render": breakdown.get("render", 0.0) * per_k,
                "physics": (breakdown["env"] - breakdown.get("render", 0.0)) * per_k,
                "other": (breakdown["wall"] - breakdown["env"] - breakdown["inference"]) * per_k,
            },
            "pipelined_seconds_per_1000_steps": best["pipelined/2"] * per_k,
        }
        row = results[str(n)]["steps_per_s"]
        print(f"N={n:3d}  " + "  ".join(f"{name} {v:7.1f} steps/s" for name, v in row.items())
              + f"  pipelined/collocated {row['pipelined/2'] / row['collocated']:.2f}", flush=True)
        for env, _, _ in built.values():
            env.close()
    largest = results[str(env_counts[-1])]["steps_per_s"]
    ratio = largest["pipelined/2"] / largest["collocated"]
    name = "rollout_pipeline_quick" if args.quick else "rollout_pipeline"
    plot = RESULTS_DIR / f"{name}.png"
    plot_breakdown(results, plot)
    data = {"policy": "flow_vla (configs/sft_pickcube_flow_vla.yaml sizes)", "task": "PickCube", "obs": "rgb 64x64 front+wrist",
            "chunk_size": 4, "decisions_per_rollout": decisions, "blocks": blocks, "torch_threads": args.threads,
            "results": results, "pipelined_vs_collocated": ratio, "plot": str(plot.relative_to(RESULTS_DIR.parent.parent))}
    path = write_result(name, data, machine)
    print(f"wrote {path} and {plot}")
    print(f"RESULT pipelined_vs_collocated={ratio:.2f}")


def plot_breakdown(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = list(results)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    x = range(len(counts))
    bottom = [0.0] * len(counts)
    for part, color in (("physics", "#4c72b0"), ("render", "#55a868"), ("inference", "#c44e52"), ("other", "#8c8c8c")):
        values = [results[c]["collocated_seconds_per_1000_steps"][part] for c in counts]
        ax.bar([i - 0.2 for i in x], values, 0.38, bottom=bottom, label=f"collocated: {part}", color=color)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.bar([i + 0.2 for i in x], [results[c]["pipelined_seconds_per_1000_steps"] for c in counts], 0.38,
           label="pipelined (2 stages): wall", color="#dd8452")
    ax.set_xticks(list(x), [f"{c} envs" for c in counts])
    ax.set_ylabel("seconds per 1000 env steps")
    ax.set_title("Flow-VLA rollouts on PickCube (RGB), 2 CPU cores")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
