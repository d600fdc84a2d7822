"""Simulation throughput of PickCube (state obs): raw physics vs `MujocoBatchedEnv` vs gymnasium async.

For N parallel envs, env-steps/s (control steps x N / s) of

- ``physics``: `mujoco.batch.Batch` alone on the env's model, ``env.substeps`` substeps per control
  step, the same thread count and the same ``stage`` as the env, replaying joint targets that
  the controller produced: the limit;
- ``ours``: `MujocoBatchedEnv.step` with random actions in [-1, 1] (ee_delta controller);
- ``async``: `gymnasium.vector.AsyncVectorEnv` over N single-env worker processes
  (``gymnasium.make("embodied/PickCube-v0")``, gymnasium's defaults: fork on Linux, next-step
  autoreset); measured up to ``--async-max`` envs (256): more processes are not measured.
  Measured first, for all N, so that the workers fork from a parent without physics threads.

Prints a table, writes benchmarks/results/sim_throughput.json (``--quick``: N = 16 and 256, fewer
steps, sim_throughput_quick.json; under a minute) and ends with
``RESULT vs_physics=<ours / physics> vs_async=<ours / async>`` at N = 256.

    python benchmarks/sim_throughput.py [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium  # noqa: E402
import mujoco  # noqa: E402
import mujoco.batch  # noqa: E402
import torch  # noqa: E402

import sims  # noqa: E402
from benchmarks.common import machine_info, time_steps, write_result  # noqa: E402
from sims.adapters import gym_id  # noqa: E402
from sims.mujoco.env import MujocoBatchedEnv  # noqa: E402

TASK = "PickCube"
KEY_N = 256


def steps_for(n: int, env_steps: int, min_steps: int) -> int:
    """Control steps for a measurement of about `env_steps` env-steps at N = n."""
    return max(min_steps, env_steps // n)


def bench_ours_and_physics(n: int, env_steps: int, min_steps: int, repeats: int) -> dict[str, float]:
    """env-steps/s of MujocoBatchedEnv and of raw Batch physics on the same model, N = n.

    The two are timed in alternating blocks (best block of each), so that load from other
    processes on the machine hits both alike."""
    env = sims.make(TASK, num_envs=n, obs_mode="state", controller="ee_delta", seed=0)
    assert isinstance(env, MujocoBatchedEnv)  # sims.make's default backend
    steps = steps_for(n, env_steps, min_steps)
    gen = torch.Generator().manual_seed(0)
    actions = [torch.rand(n, env.action_dim, generator=gen) * 2 - 1 for _ in range(16)]
    counter = iter(range(1 << 62))

    def ours() -> None:
        env.step(actions[next(counter) % len(actions)])

    targets = []  # the joint targets the controller set: the physics limit replays them
    for _ in range(len(actions)):
        ours()
        targets.append(env.ctrl.copy())
    # The same model, thread count, substeps and stage, from the scene as the env left it, with
    # the same kind of arm motion (the recorded targets, written into ctrl: a (N, 9) copy). No
    # bound fields: nothing is copied out per call.
    batch = mujoco.batch.Batch(env.model, n, env.batch.nthread)
    batch.state[:] = env.batch.state
    ctrl = batch.bind("ctrl")  # a view of the state rows
    stage = mujoco.mjtStage.mjSTAGE_POS

    def physics() -> None:
        ctrl[:] = targets[next(counter) % len(targets)]
        batch.step(nstep=env.substeps, stage=stage)

    t_ours = t_physics = float("inf")
    for _ in range(repeats):
        t_ours = min(t_ours, time_steps(ours, steps, warmup=1))
        t_physics = min(t_physics, time_steps(physics, steps, warmup=1))
    result = {
        "ours": steps * n / t_ours,
        "physics": steps * n / t_physics,
        "steps_per_block": steps,
        "blocks": repeats,
        "threads": env.batch.nthread,
        "substeps": env.substeps,
    }
    env.close()
    return result


def bench_async(n: int, env_steps: int, min_steps: int, repeats: int) -> dict[str, float]:
    """env-steps/s of gymnasium's AsyncVectorEnv over n single-env worker processes."""
    start = time.perf_counter()
    envs = gymnasium.vector.AsyncVectorEnv([functools.partial(gymnasium.make, gym_id(TASK))] * n)
    startup = time.perf_counter() - start
    envs.reset(seed=0)
    envs.action_space.seed(0)
    actions = [envs.action_space.sample() for _ in range(16)]
    counter = iter(range(1 << 62))

    def step() -> None:
        envs.step(actions[next(counter) % len(actions)])

    steps = steps_for(n, env_steps, min_steps)
    t = time_steps(step, steps, warmup=3, repeats=repeats)
    envs.close()
    return {"async": steps * n / t, "async_steps_per_block": steps, "async_blocks": repeats, "async_startup_s": startup}


def profile_step(n: int, steps: int) -> str:
    """cProfile summary of `MujocoBatchedEnv.step` at N = n (top functions by own time)."""
    env = sims.make(TASK, num_envs=n, obs_mode="state", seed=0)
    action = torch.rand(n, env.action_dim) * 2 - 1
    for _ in range(3):
        env.step(action)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        env.step(action)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    env.close()
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 16, 256 and fewer steps (< 1 min)")
    parser.add_argument("--profile", action="store_true", help=f"also cProfile env.step at N = {KEY_N}")
    parser.add_argument("--async-max", type=int, default=KEY_N, help="largest N measured with AsyncVectorEnv")
    parser.add_argument("--sizes", type=int, nargs="*", help="N values (default: 16 64 256 1024)")
    args = parser.parse_args()

    sizes = args.sizes or ([16, KEY_N] if args.quick else [16, 64, 256, 1024])
    if KEY_N not in sizes:
        sizes = sorted({*sizes, KEY_N})
    env_steps, min_steps, repeats = (2048, 8, 3) if args.quick else (8192, 24, 5)

    machine = machine_info()
    async_rows = {
        n: bench_async(n, env_steps // 4, max(4, min_steps // 2), repeats) for n in sizes if n <= args.async_max
    }
    rows = []
    for n in sizes:
        ours = bench_ours_and_physics(n, env_steps, min_steps, repeats)
        row: dict[str, float | str | None] = {"num_envs": n, **ours}
        row.update(async_rows.get(n, {"async": None, "async_note": f"not measured: over {args.async_max} processes"}))
        async_rate = async_rows[n]["async"] if n in async_rows else None
        row["vs_physics"] = ours["ours"] / ours["physics"]
        row["vs_async"] = ours["ours"] / async_rate if async_rate else None
        rows.append(row)
        print_row(row, header=len(rows) == 1)

    key = next(r for r in rows if r["num_envs"] == KEY_N)
    profile = profile_step(KEY_N, 20 if args.quick else 60) if args.profile else None
    if profile:
        print(profile)
    path = write_result(
        "sim_throughput" + ("_quick" if args.quick else ""),
        {
            "task": TASK,
            "obs_mode": "state",
            "controller": "ee_delta",
            "quick": args.quick,
            "unit": "env-steps/s (control steps x N / s)",
            "rows": rows,
            "vs_physics": key["vs_physics"],
            "vs_async": key["vs_async"],
            "targets": {"vs_physics": 0.70, "vs_async": 2.0},
            "profile": profile,
        },
        machine,
    )
    print(f"wrote {path}")
    vs_async = key["vs_async"]
    shown = f"{vs_async:.2f}" if isinstance(vs_async, float) else f"unmeasured (--async-max {args.async_max} < {KEY_N})"
    print(f"RESULT vs_physics={key['vs_physics']:.3f} vs_async={shown}")


def print_row(row: dict, header: bool) -> None:
    if header:
        print(f"{'N':>6} {'physics':>10} {'ours':>10} {'async':>10} {'ours/phys':>10} {'ours/async':>11}")

    def fmt(value, spec: str) -> str:
        return format(value, spec) if value is not None else "-"

    print(
        f"{row['num_envs']:>6} {row['physics']:>10.0f} {row['ours']:>10.0f} {fmt(row['async'], '>10.0f'):>10} "
        f"{row['vs_physics']:>10.2f} {fmt(row['vs_async'], '>11.2f'):>11}",
        flush=True,
    )


if __name__ == "__main__":
    main()
