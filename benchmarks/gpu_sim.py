"""GPU simulation: env steps/s of PickCube on the MuJoCo Warp and ManiSkill3 backends, and PPO
wall time to 90% success on PickCube against ManiSkill's own PPO baseline.

Measurements (each recorded with the device, or with the reason it could not run):

- ``throughput``: env steps/s (control steps x N / s) of `BatchedEnv.step` with random actions
  in [-1, 1] (ee_delta / pd_ee_delta_pose), state observations and 64x64 RGB ("front" camera),
  at N = 1024, 2048, 4096, 8192 envs, for ``mujoco_warp`` and ``maniskill`` on ``cuda``;
- ``ppo`` (``--ppo``): our PPO (configs/ppo_pickcube_state.yaml on ``mujoco_warp``/cuda with
  ``--ppo-envs`` envs) trained until held-out success >= 90%, checked every
  ``--ppo-eval-every`` iterations; wall time of the training iterations (evaluation excluded);
- ``maniskill_ppo`` (``--maniskill-ppo PATH``): ManiSkill's baseline, ``PATH`` being
  ``examples/baselines/ppo/ppo.py`` of a ManiSkill checkout (the wheel does not ship it), run
  as its README runs PickCube-v1; the wall time at which its ``eval/success_once`` first
  reaches 0.9, read from its tensorboard events.

``--quick`` (any machine, under a few minutes on 2 CPU cores): Warp on the CPU device and
the MuJoCo CPU backend at N = 4 and 16, state and RGB, a few steps each; writes
gpu_sim_quick.json. Without a GPU the full run records every entry as unavailable.

    python benchmarks/gpu_sim.py --quick
    python benchmarks/gpu_sim.py [--envs 1024 2048 4096 8192] [--ppo] [--maniskill-ppo PATH]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import sims  # noqa: E402
from benchmarks.common import machine_info, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASK = "PickCube"
TARGET = 0.9


def env_steps_per_s(
    backend: str, obs_mode: str, num_envs: int, device: str, steps: int, warmup: int = 3
) -> dict[str, Any]:
    """Time `steps` control steps of `num_envs` envs after `warmup` (kernel compilation, caches)."""
    record: dict[str, Any] = {
        "backend": backend,
        "obs_mode": obs_mode,
        "num_envs": num_envs,
        "device": device,
    }
    try:
        env = sims.make(
            TASK,
            backend=backend,
            num_envs=num_envs,
            obs_mode=obs_mode,
            cameras=("front",),
            device=device,
        )
    except Exception as error:  # an unavailable backend or device is a result, not a crash
        return record | {"error": f"{type(error).__name__}: {error}"}
    generator = torch.Generator(device="cpu").manual_seed(0)

    def step() -> None:
        action = torch.rand(num_envs, env.action_dim, generator=generator) * 2 - 1
        env.step(action.to(env.device))

    start = time.perf_counter()
    for _ in range(warmup):
        step()
    warmup_s = time.perf_counter() - start
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    env.close()
    return record | {
        "steps": steps,
        "seconds": seconds,
        "env_steps_per_s": steps * num_envs / seconds,
        "warmup_s": warmup_s,
    }


def our_ppo(num_envs: int, eval_every: int, max_env_steps: int) -> dict[str, Any]:
    """Our PPO on PickCube (mujoco_warp, cuda) to 90% held-out success."""
    from embodied.config import load_config
    from embodied.runner.trainer import TrainConfig, Trainer

    if not torch.cuda.is_available():
        return {"error": "no CUDA device"}
    cfg = load_config(
        TrainConfig,
        ROOT / "configs/ppo_pickcube_state.yaml",
        [
            "env.backend=mujoco_warp",
            "env.device=cuda",
            f"env.num_envs={num_envs}",
            f"total_env_steps={max_env_steps}",
            "eval.every=0",
            "checkpoint.every=0",
            "log.progress_bar=false",
            "log.final_video=false",
            f"run_dir=runs/gpu_sim_ppo_{int(time.time())}",
        ],
    )
    trainer = Trainer(cfg)
    curve = []
    while not trainer.finished():
        trainer.train(stop_after=eval_every)
        success = trainer.evaluate()["success_rate"]
        curve.append(
            {"env_steps": trainer.env_steps, "wall_s": trainer.wall_time, "success": success}
        )
        if success >= TARGET:
            return {
                "num_envs": num_envs,
                "env_steps_to_90": trainer.env_steps,
                "wall_s_to_90": trainer.wall_time,
                "curve": curve,
            }
    return {
        "num_envs": num_envs,
        "error": f"not at 90% after {trainer.env_steps} env steps",
        "curve": curve,
    }


def maniskill_ppo(script: Path, num_envs: int, max_env_steps: int) -> dict[str, Any]:
    """ManiSkill's baseline PPO on PickCube-v1 (its README's flags); time to eval success 0.9."""
    if not script.is_file():
        return {
            "error": f"{script} not found (examples/baselines/ppo/ppo.py of a ManiSkill checkout)"
        }
    exp = f"gpu_sim_maniskill_ppo_{int(time.time())}"
    command = [
        sys.executable,
        str(script),
        "--env_id=PickCube-v1",
        f"--num_envs={num_envs}",
        "--update_epochs=8",
        "--num_minibatches=32",
        f"--total_timesteps={max_env_steps}",
        "--eval_freq=10",
        "--num-steps=20",
        f"--exp-name={exp}",
    ]
    start = time.time()
    done = subprocess.run(command, cwd=script.parent, capture_output=True, text=True)
    record: dict[str, Any] = {
        "command": " ".join(command),
        "num_envs": num_envs,
        "total_s": time.time() - start,
    }
    if done.returncode:
        return record | {"error": done.stderr[-2000:]}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(script.parent / "runs" / exp))
    events.Reload()
    scalars = events.Scalars("eval/success_once")
    first = min(e.wall_time for tag in events.Tags()["scalars"] for e in events.Scalars(tag))
    for event in scalars:
        if event.value >= TARGET:
            return record | {"env_steps_to_90": event.step, "wall_s_to_90": event.wall_time - first}
    return record | {"error": "eval/success_once never reached 0.9"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="Warp on the CPU device at a few worlds"
    )
    parser.add_argument("--envs", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--backends", nargs="+", default=["mujoco_warp", "maniskill"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--ppo", action="store_true", help="our PPO to 90%% on PickCube (GPU)")
    parser.add_argument("--ppo-envs", type=int, default=4096)
    parser.add_argument("--ppo-eval-every", type=int, default=10)
    parser.add_argument("--ppo-max-env-steps", type=int, default=50_000_000)
    parser.add_argument(
        "--maniskill-ppo", type=Path, default=None, help="ManiSkill's examples/baselines/ppo/ppo.py"
    )
    args = parser.parse_args()
    torch.set_num_threads(1 if args.quick else torch.get_num_threads())

    machine = machine_info()
    if args.quick:
        grid = [
            (backend, obs, n, "cpu")
            for backend in ("mujoco_warp", "mujoco")
            for obs in ("state", "rgb")
            for n in (4, 16)
        ]
        steps = 5
    else:
        grid = [
            (backend, obs, n, "cuda")
            for backend in args.backends
            for obs in ("state", "rgb")
            for n in args.envs
        ]
        steps = args.steps
    rows = []
    for backend, obs, n, device in grid:
        row = env_steps_per_s(backend, obs, n, device, steps)
        rows.append(row)
        figure = (
            f"{row['env_steps_per_s']:10.0f} env steps/s"
            if "env_steps_per_s" in row
            else f"unavailable: {row['error'][:90]}"
        )
        print(f"{backend:12s} {obs:5s} N={n:5d} {device:4s} {figure}", flush=True)
    data: dict[str, Any] = {"task": TASK, "image_size": 64, "throughput": rows}
    if args.ppo:
        data["ppo"] = our_ppo(args.ppo_envs, args.ppo_eval_every, args.ppo_max_env_steps)
        print("ppo", {k: v for k, v in data["ppo"].items() if k != "curve"}, flush=True)
    if args.maniskill_ppo is not None:
        data["maniskill_ppo"] = maniskill_ppo(
            args.maniskill_ppo, args.ppo_envs, args.ppo_max_env_steps
        )
        print("maniskill_ppo", data["maniskill_ppo"], flush=True)
    path = write_result("gpu_sim_quick" if args.quick else "gpu_sim", data, machine)
    print(f"wrote {path}")
    warp = [r for r in rows if r["backend"] == "mujoco_warp" and "env_steps_per_s" in r]
    if warp:
        best = max(warp, key=lambda r: r["num_envs"] if r["obs_mode"] == "state" else -1)
        print(
            f"RESULT warp_state_env_steps_per_s={best['env_steps_per_s']:.0f} at N={best['num_envs']} on {best['device']}"
        )


if __name__ == "__main__":
    main()
