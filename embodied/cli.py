"""The `embodied` command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from pathlib import Path


def _cmd_tasks(args: argparse.Namespace) -> int:
    import sims
    from sims.tasks import TASKS

    print(f"{'task':<12} {'steps':>5}  description / instructions")
    for name in sims.list_tasks():
        task = TASKS[name]
        print(f"{name:<12} {task.max_episode_steps:>5}  {task.description}")
        for phrase in task.instructions:
            print(f"{'':<19}- {phrase}")
    return 0


def _cmd_sim_demo(args: argparse.Namespace) -> int:
    import sims
    from embodied.demo import evaluate_expert, record_expert_video, success_table

    tasks = sims.list_tasks() if args.task == "all" else [args.task]
    from sims.core import check_choice

    for task in tasks:
        check_choice("task", task, sims.list_tasks())
    results = []
    for task in tasks:
        results.append(evaluate_expert(task, episodes=args.episodes, seed=args.seed, randomize=args.randomize))
        path = record_expert_video(
            task, Path(args.out) / f"{task}.mp4", num_envs=args.video_envs, seed=args.seed,
            camera=args.camera, randomize=args.randomize,
        )
        print(f"video: {path}")
    print(success_table(results))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from embodied.demo import run_demo, success_table

    results = run_demo(Path(args.out), episodes=args.episodes, seed=args.seed, video=not args.no_video, randomize=args.randomize)
    print(success_table(results))
    print(f"videos and success table in {args.out}/")
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    import sims
    from embodied.data.record import RecordConfig, record
    from sims.core import check_choice

    check_choice("task", args.task, sims.list_tasks())
    cfg = RecordConfig(
        task=args.task, episodes=args.episodes, root=args.root or f"data/{args.task}", num_envs=args.num_envs,
        seed=args.seed, cameras=tuple(args.cameras.split(",")), image_size=args.image_size, video=not args.no_video,
        noise=args.noise, label=args.label, keep_failures=args.keep_failures, randomize=args.randomize,
        overwrite=args.overwrite, hold_steps=args.hold_steps,
    )
    summary = record(cfg)
    print(
        f"{summary['episodes']} episodes, {summary['frames']} frames -> {summary['root']} "
        f"(expert success {summary['expert_success_rate']:.1%} over {summary['attempts']} attempts)"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from embodied.config import load_config
    from embodied.runner.trainer import TrainConfig, Trainer

    if args.resume:
        if args.config or args.overrides:
            raise ValueError("--resume continues a run with its saved config; give no config file or overrides.")
        trainer = Trainer.from_run_dir(args.resume)
    else:
        if not args.config:
            raise ValueError("embodied train needs a config file (see configs/) or --resume RUN_DIR.")
        trainer = Trainer(load_config(TrainConfig, args.config, args.overrides))
    print(f"run directory: {trainer.run_dir}")
    trainer.train()
    from embodied.report import write_report

    print(f"report: {write_report(trainer.run_dir)}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    import torch

    from embodied.config import load_config
    from embodied.evaluate import evaluate_policy
    from embodied.runner.checkpoint import latest_checkpoint
    from embodied.runner.trainer import TrainConfig, load_policy

    run_dir = Path(args.run_dir)
    checkpoint = run_dir / "checkpoints" / args.checkpoint if args.checkpoint else latest_checkpoint(run_dir)
    if not (checkpoint / "policy").is_dir():
        available = sorted(p.name for p in (run_dir / "checkpoints").glob("iter_*"))
        raise SystemExit(f"{checkpoint} holds no policy; checkpoints of {run_dir}: {', '.join(available) or 'none'}.")
    cfg = load_config(TrainConfig, run_dir / "config.yaml", args.overrides)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    policy = load_policy(checkpoint / "policy", cfg.policy, adapters=False)
    suffix = "_stochastic" * args.stochastic + "".join(f"_{re.sub(r'[^A-Za-z0-9._=-]+', '-', o)}" for o in args.overrides)
    name = f"eval_{checkpoint.name}_seed{args.seed}{suffix}"
    video = run_dir / "videos" / f"{name}.mp4" if args.video else None
    result = evaluate_policy(policy, cfg.env, args.episodes, args.seed, deterministic=not args.stochastic,
                             video_path=video)
    result |= {"checkpoint": str(checkpoint), "overrides": list(args.overrides), "stochastic": args.stochastic}
    out = run_dir / f"{name}.json"
    out.write_text(json.dumps(result, indent=2))
    low, high = result["success_ci95"]
    stages = ", ".join(f"{k[len('stage/'):]} {v:.0%}" for k, v in result.items() if k.startswith("stage/"))
    print(f"success {result['success_rate']:.1%} (95% CI {low:.1%}-{high:.1%}) over {args.episodes} episodes"
          f"{f' (reached: {stages})' if stages else ''} -> {out}")
    return 0


def _cmd_lift(args: argparse.Namespace) -> int:
    from embodied.config import load_config
    from embodied.lift import LiftConfig, run_lift

    cfg = load_config(LiftConfig, args.config, args.overrides)
    command = " ".join(["uv run embodied lift", args.config, *args.overrides])
    summary = run_lift(cfg, command=command)
    return 0 if summary else 1


def _cmd_report(args: argparse.Namespace) -> int:
    from embodied.report import write_report

    print(write_report(args.run_dir))
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    import json

    from real_robot.deploy import DeployConfig, run_from_files

    cfg = DeployConfig(
        policy=args.policy, episodes=args.episodes, max_steps=args.max_steps, chunking=args.chunking,
        actions_per_chunk=args.actions_per_chunk, realtime=not args.no_realtime, seed=args.seed, token=args.token,
        record=args.record or "", overwrite=args.overwrite, intervention=args.intervention,
        intervention_start=args.intervention_start, intervention_steps=args.intervention_steps,
    )
    summary = run_from_files(args.robot, cfg, tuple(args.overrides))
    print(
        f"success {summary['success_rate']:.1%} over {summary['episodes']} episodes, {summary['steps']} steps, "
        f"{summary['intervention_steps']} takeover steps, safety events {dict(summary['safety_events'])}"
    )
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=2, default=str))
    return 1 if summary["aborted"] else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from real_robot.policy_runtime import LocalPolicy
    from real_robot.server import PolicyServer

    server = PolicyServer(
        LocalPolicy.from_path(args.policy, control_hz=args.control_hz), host=args.host, port=args.port,
        token=args.token, max_message_bytes=args.max_message_bytes,
    )
    print(f"serving {args.policy} on ws://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embodied", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tasks", help="list the registered tasks and their instructions")
    p.set_defaults(func=_cmd_tasks)

    p = sub.add_parser("sim-demo", help="run one task's scripted expert: success rate and a video")
    p.add_argument("--task", required=True, help="task name, or 'all'")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--video-envs", type=int, default=4)
    p.add_argument("--camera", default="front")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--randomize", action="store_true", help="turn domain randomization on")
    p.add_argument("--out", default="runs/sim-demo")
    p.set_defaults(func=_cmd_sim_demo)

    p = sub.add_parser("demo", help="the quickstart: every task's expert, success table and videos")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--randomize", action="store_true", help="turn domain randomization on")
    p.add_argument("--no-video", action="store_true")
    p.add_argument("--out", default="runs/demo")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("record", help="record scripted-expert demonstrations as a LeRobotDataset")
    p.add_argument("--task", required=True)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--root", help="dataset directory (default data/<task>)")
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cameras", default="front,wrist", help="comma-separated camera names")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--noise", type=float, default=0.0, help="std of Gaussian noise on the executed actions")
    p.add_argument("--label", choices=("executed", "clean"), default="executed",
                   help="record the executed (noisy) action or the expert's clean one (DART)")
    p.add_argument("--keep-failures", action="store_true", help="keep episodes the expert failed")
    p.add_argument("--hold-steps", type=int, default=0,
                   help="keep recording this many steps after the first success (shows policies what to do at the goal)")
    p.add_argument("--randomize", action="store_true", help="turn domain randomization on")
    p.add_argument("--no-video", action="store_true", help="store PNG images instead of mp4 video")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --root")
    p.set_defaults(func=_cmd_record)

    p = sub.add_parser("train", help="train from a YAML recipe: embodied train configs/X.yaml algo.lr=3e-4 ...")
    p.add_argument("config", nargs="?", help="a YAML recipe from configs/")
    p.add_argument("overrides", nargs="*", help="dotted overrides, key.sub=value")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its latest checkpoint")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a run's latest (or a named) checkpoint on held-out seeds")
    p.add_argument("run_dir")
    p.add_argument("--checkpoint", default="", help="a folder under RUN_DIR/checkpoints, e.g. iter_000010 (default: latest)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=2_000_000)
    p.add_argument("--video", action="store_true")
    p.add_argument("--stochastic", action="store_true",
                   help="sample actions as RL rollouts do (an AR VLA's tokens at policy.temperature) instead of "
                        "the deterministic readout")
    p.add_argument("overrides", nargs="*",
                   help="dotted overrides of the run's config, e.g. policy.decoding=expected policy.temperature=0.5")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("lift", help="the SFT-to-RL story: demos -> SFT (S0) -> RL (S1) -> report (configs/lift_*.yaml)")
    p.add_argument("config", help="a lift recipe, e.g. configs/lift_pickcube_flow_vla_ppo.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. demos=20 'rl_overrides=[total_env_steps=50000]'")
    p.set_defaults(func=_cmd_lift)

    p = sub.add_parser("deploy", help="drive a robot (behind its safety layer) with a policy or a policy server")
    p.add_argument("--robot", required=True, help="robot config YAML (configs/robots/)")
    p.add_argument("--policy", required=True, help="run directory, checkpoint, policy folder, or ws://host:port")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the robot file: robot.task=Reach safety.watchdog_timeout_s=0.1")
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=0, help="per episode; 0: until the robot says done (sims), else 200")
    p.add_argument("--chunking", choices=("queue", "ensemble"), default="queue")
    p.add_argument("--actions-per-chunk", type=int, default=0, help="queue: actions executed per chunk (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--token", help="shared token of the policy server")
    p.add_argument("--record", help="write the episodes to a LeRobotDataset at this directory")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--intervention", choices=("none", "scripted", "keyboard"), default="none")
    p.add_argument("--intervention-start", type=int, default=10)
    p.add_argument("--intervention-steps", type=int, default=10)
    p.add_argument("--no-realtime", action="store_true", help="do not pace the loop (simulated robots only)")
    p.add_argument("--summary", help="write the run's summary as JSON here")
    p.set_defaults(func=_cmd_deploy)

    p = sub.add_parser("serve", help="serve a checkpoint over websocket + msgpack for embodied deploy")
    p.add_argument("policy", help="run directory, checkpoint or policy folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--token", help="require this shared token from clients")
    p.add_argument("--control-hz", type=float, default=20.0)
    p.add_argument("--max-message-bytes", type=int, default=16 * 1024 * 1024)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("report", help="PNG curves and an HTML page for a run directory")
    p.add_argument("run_dir")
    p.set_defaults(func=_cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # dotted overrides given after options (`eval RUN --episodes 10 policy.decoding=expected`)
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
            "=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:  # bad input: one clear line
        print(f"embodied: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
