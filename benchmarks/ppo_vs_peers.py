"""Time to 90% success, PPO from state observations: ours vs stable-baselines3 vs rsl_rl.

Four learners train on the same task (PickCube; ``--quick``: Reach), the same env config
(``configs/ppo_<task>_state.yaml``'s ``env``), the same seed, the same number of envs and gamma,
and the same network size, in one process:

- ``ours``: `embodied.runner.trainer.Trainer` with the config as it is (no tuning for this
  benchmark; its periodic evaluation, checkpoints, TensorBoard and progress bar are switched off,
  since the benchmark evaluates itself);
- ``rsl_rl``: rsl-rl-lib's ``OnPolicyRunner`` through `sims.adapters.RslRlVecEnv`, with the
  runner defaults of mjlab's manipulation (lift-cube) recipe: 24 steps per env, 5 epochs of 4
  minibatches, lr 1e-3 with the adaptive KL schedule, observation normalization, ELU;
- ``sb3``: stable-baselines3's ``PPO("MlpPolicy")`` as SB3's users run it: its ``DummyVecEnv``
  (``make_vec_env``'s default) over N registered single envs, ``gymnasium.make("embodied/<Task>-v0")``
  (`sims.adapters.GymEnv`, one physics thread each), their two state features concatenated, and
  ``VecNormalize`` (observations only, as rl-zoo's ``normalize: true``), with SB3's defaults and
  the rollout length, minibatch count and epochs of our config (a batch per env-step comparable
  to ours, where SB3's own default of 2048 steps per env would be 500k samples per update).
  ``SubprocVecEnv`` is no option at 256 envs on 2 cores: 256 worker processes did not finish
  starting in 5 minutes (and `benchmarks/sim_throughput.py` measures gymnasium's process-per-env
  ``AsyncVectorEnv`` at ~10x below the batched env);
- ``sb3_batched``: the same SB3 learner on our batched env, through `sims.adapters.SB3VecEnv`.
  It isolates the algorithm from the simulator: ``sb3`` against ``sb3_batched`` is what the
  batched env buys SB3, ``ours`` against ``sb3_batched`` what our PPO does on the same env.

Every learner trains in chunks of about ``eval_every`` env steps (whole iterations); after each
chunk, its deterministic policy runs through the same `embodied.evaluate.evaluate_policy` on the
same held-out seeds (100 episodes, seed 1,000,000; an episode counts if solved at any step). A
learner stops at the first evaluation with success >= 90%, or when its budget of env steps or
training wall seconds is spent. Wall time counts training only (the learner's own rollouts and
updates), never evaluation or construction, alike for all. The learners take turns, one chunk
each, so that load from other processes on a shared machine falls on all alike, each with its
own random state (`Track`), and torch runs on one thread for all (``--torch-threads``): on a
loaded 2-core machine spinning OpenMP threads make these small MLPs ~20x slower.

speedup_vs_X = X's wall s to 90% / ours (X: sb3, sb3_batched, rsl_rl; the RESULT line has sb3
and rsl_rl). When X did not reach 90% within the budget, the ratio uses the wall time X spent
and is a lower bound (``speedup_vs_X_kind: "lower_bound"`` in the JSON); when ours did not, an
upper bound; when neither did, null.

Prints a table, writes benchmarks/results/ppo_vs_peers.json (``--quick``:
ppo_vs_peers_quick.json, a few minutes) and ends with
``RESULT speedup_vs_sb3=<ratio> speedup_vs_rsl_rl=<ratio>``.

    python -m benchmarks.ppo_vs_peers [--quick] [--learners ours rsl_rl sb3 sb3_batched]
"""

from __future__ import annotations

import abc
import argparse
import copy
import dataclasses
import functools
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from rsl_rl.runners import OnPolicyRunner  # noqa: E402
from stable_baselines3 import PPO as SB3PPO  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from tqdm import tqdm  # noqa: E402

import sims  # noqa: E402
from benchmarks.common import machine_info, write_result  # noqa: E402
from embodied.algos.ppo import PPOConfig  # noqa: E402
from embodied.config import load_config, to_dict  # noqa: E402
from embodied.evaluate import evaluate_policy  # noqa: E402
from embodied.runner.trainer import TrainConfig, Trainer, seed_everything  # noqa: E402
from policies.base import Policy, PolicyOutput  # noqa: E402
from policies.mlp import MLPPolicyConfig  # noqa: E402
from sims.adapters import DEFAULT_RSL_RL_GROUPS, RslRlVecEnv, SB3VecEnv, gym_id  # noqa: E402
from sims.core import EnvConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET_SUCCESS = 0.9
LEARNERS = ("ours", "rsl_rl", "sb3", "sb3_batched")
PEERS = LEARNERS[1:]
STATE_KEYS = ("observation.state", "observation.environment_state")


def ppo_mlp_recipe(cfg: TrainConfig) -> tuple[PPOConfig, MLPPolicyConfig]:
    """The recipe's algo and policy sections: every learner trains PPO on an MLP policy."""
    if not isinstance(cfg.algo, PPOConfig) or not isinstance(cfg.policy, MLPPolicyConfig):
        raise ValueError(
            f"The race needs a PPO recipe with an MLP policy; got algo {cfg.algo.name!r}, "
            f"policy {cfg.policy.kind!r}."
        )
    return cfg.algo, cfg.policy


def reached_target(success_rate: float) -> bool:
    """Success >= 90%, robust to the float32 in which the rate was computed (0.9 -> 0.89999998)."""
    return success_rate >= TARGET_SUCCESS - 1e-6


@dataclasses.dataclass(frozen=True)
class Setup:
    """The task, budget and evaluation shared by the learners."""

    config: str  # our recipe; its env section is every learner's env
    max_env_steps: int  # per learner
    max_wall_s: float  # per learner, training time only
    eval_every: int  # env steps between evaluations (rounded up to whole iterations)
    eval_episodes: int = 100
    eval_seed: int = 1_000_000


FULL = Setup(
    "configs/ppo_pickcube_state.yaml", max_env_steps=2_000_000, max_wall_s=1200, eval_every=20_000
)
QUICK = Setup(
    "configs/ppo_reach_state.yaml", max_env_steps=300_000, max_wall_s=240, eval_every=4_096
)


class ActorForEvaluation(Policy):
    """A peer's deterministic actor behind the `Policy` interface, so that all the learners
    are evaluated by the same `evaluate_policy`. ``act_fn`` maps an observation batch to
    actions (N, A); only ``act(obs, deterministic=True)`` is supported."""

    kind = "actor_for_evaluation"

    def __init__(self, act_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor]):
        super().__init__(config=None)
        self.act_fn = act_fn

    def act(self, obs: dict[str, Any], deterministic: bool = False) -> PolicyOutput:
        if not deterministic:
            raise ValueError("ActorForEvaluation only acts deterministically.")
        action = torch.as_tensor(self.act_fn(obs), dtype=torch.float32)
        return PolicyOutput(action=action[:, None, :], log_prob=torch.zeros(action.shape[0]))

    def evaluate(self, obs, actions, extras):
        raise NotImplementedError("ActorForEvaluation is for evaluation only.")


def flat_state(obs: dict[str, Any]) -> torch.Tensor:
    """(N, D_state + D_env) float32: the state features every learner sees, in one order."""
    return torch.cat([obs[key].float() for key in STATE_KEYS], dim=1)


RngState = tuple[Any, Any, torch.Tensor]


def rng_state() -> RngState:
    """The global random states the learners draw from: Python's, numpy's and torch's."""
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def set_rng_state(state: RngState) -> None:
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])


# ---------------------------------------------------------------------------- learners
class Learner(abc.ABC):
    """One PPO implementation, trained in chunks and evaluated between them."""

    name: str
    hyperparameters: dict[str, Any]
    rng: RngState  # the global random state right after it was built and seeded

    @property
    @abc.abstractmethod
    def env_steps(self) -> int:
        """Env steps trained so far (N x control steps)."""

    @abc.abstractmethod
    def train_until(self, env_steps: int) -> None:
        """Train whole iterations until at least `env_steps` env steps are done."""

    @abc.abstractmethod
    def policy(self) -> Policy:
        """The current policy, for `evaluate_policy` (deterministic actions)."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release the learner's envs."""


class OursLearner(Learner):
    name = "ours"

    def __init__(self, cfg: TrainConfig, run_dir: Path):
        cfg = dataclasses.replace(
            cfg,
            run_dir=str(run_dir),
            total_env_steps=1 << 62,  # the benchmark stops it; no final evaluation inside train()
            eval=dataclasses.replace(cfg.eval, every=0),
            checkpoint=dataclasses.replace(cfg.checkpoint, every=0),
            log=dataclasses.replace(
                cfg.log, tensorboard=False, progress_bar=False, final_video=False
            ),
        )
        self.trainer = Trainer(cfg)
        algo, _ = ppo_mlp_recipe(cfg)
        self.steps_per_iteration = (
            cfg.env.num_envs * algo.num_steps * self.trainer.policy.chunk_size
        )
        self.hyperparameters = {
            "library": "embodied",
            "config": to_dict(cfg.algo) | {"policy": to_dict(cfg.policy)},
            "num_envs": cfg.env.num_envs,
            "steps_per_iteration": self.steps_per_iteration,
        }

    @property
    def env_steps(self) -> int:
        return self.trainer.env_steps

    def train_until(self, env_steps: int) -> None:
        iterations = math.ceil((env_steps - self.env_steps) / self.steps_per_iteration)
        if iterations > 0:
            self.trainer.train(stop_after=iterations)

    def policy(self) -> Policy:
        return self.trainer.policy

    def close(self) -> None:
        self.trainer.env.close()


def rsl_rl_train_cfg(num_steps_per_env: int, hidden: list[int], gamma: float) -> dict[str, Any]:
    """rsl_rl's OnPolicyRunner config: mjlab's lift-cube runner (rsl_rl's usual defaults), with
    our network size and gamma."""
    return {
        "num_steps_per_env": num_steps_per_env,
        "save_interval": 1 << 30,
        "obs_groups": {"actor": ["policy"], "critic": ["policy"]},
        "algorithm": {
            "class_name": "PPO",
            "num_learning_epochs": 5,
            "num_mini_batches": 4,
            "learning_rate": 1e-3,
            "schedule": "adaptive",
            "desired_kl": 0.01,
            "clip_param": 0.2,
            "gamma": gamma,
            "lam": 0.95,
            "value_loss_coef": 1.0,
            "use_clipped_value_loss": True,
            "entropy_coef": 0.005,
            "max_grad_norm": 1.0,
        },
        "actor": {
            "class_name": "MLPModel",
            "hidden_dims": hidden,
            "activation": "elu",
            "obs_normalization": True,
            "distribution_cfg": {"class_name": "GaussianDistribution", "init_std": 1.0},
        },
        "critic": {
            "class_name": "MLPModel",
            "hidden_dims": hidden,
            "activation": "elu",
            "obs_normalization": True,
        },
    }


class RslRlLearner(Learner):
    name = "rsl_rl"

    def __init__(self, env_cfg: EnvConfig, seed: int, hidden: list[int], gamma: float):
        seed_everything(seed)
        self.env = RslRlVecEnv(sims.make(dataclasses.replace(env_cfg, seed=seed)))
        train_cfg = rsl_rl_train_cfg(24, hidden, gamma)
        self.runner = OnPolicyRunner(
            self.env, copy.deepcopy(train_cfg), log_dir=None, device=str(self.env.device)
        )
        self.steps_per_iteration = self.env.num_envs * train_cfg["num_steps_per_env"]
        self.iterations = 0
        self.hyperparameters = {
            "library": "rsl-rl-lib",
            "train_cfg": train_cfg,
            "num_envs": self.env.num_envs,
            "init_at_random_ep_len": True,
            "steps_per_iteration": self.steps_per_iteration,
        }

    @property
    def env_steps(self) -> int:
        return self.iterations * self.steps_per_iteration

    def train_until(self, env_steps: int) -> None:
        iterations = math.ceil((env_steps - self.env_steps) / self.steps_per_iteration)
        if iterations > 0:
            # Random initial episode lengths once, at the start, as rsl_rl's users train.
            self.runner.learn(iterations, init_at_random_ep_len=self.iterations == 0)
            self.iterations += iterations

    def policy(self) -> Policy:
        actor = self.runner.alg.get_policy()
        (group,) = DEFAULT_RSL_RL_GROUPS

        def act(obs: dict[str, torch.Tensor]) -> torch.Tensor:
            groups = TensorDict({group: flat_state(obs)}, batch_size=[obs[STATE_KEYS[0]].shape[0]])
            return actor(groups)  # the distribution's mean

        return ActorForEvaluation(act)

    def close(self) -> None:
        self.env.close()


class FlatState(gymnasium.ObservationWrapper):
    """A single env's observation as SB3's ``MlpPolicy`` takes it: the `STATE_KEYS` features
    concatenated in `flat_state`'s order, float32 (D,)."""

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gymnasium.spaces.Dict):
            raise TypeError(f"FlatState wraps an env with dict observations; got {space}.")
        dim = sum(gymnasium.spaces.flatdim(space[key]) for key in STATE_KEYS)  # Box: prod(shape)
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (dim,), np.float32)

    def observation(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([observation[key].ravel() for key in STATE_KEYS], dtype=np.float32)


def single_env_factory(env_cfg: EnvConfig, seed: int) -> Callable[[], gymnasium.Env]:
    """A function making one env of `env_cfg`'s task and settings through the registered
    gymnasium id, as ``DummyVecEnv`` takes it."""
    if env_cfg.max_episode_steps is not None:
        raise ValueError(
            "the sb3 learner takes the task's own episode length (max_episode_steps: null)"
        )
    skip = {"task", "num_envs", "max_episode_steps", "seed", "num_threads"}
    overrides = {
        field.name: getattr(env_cfg, field.name)
        for field in dataclasses.fields(env_cfg)
        if field.name not in skip
    }
    # One physics thread per single env: its batch of one has nothing to share out.
    make = functools.partial(
        gymnasium.make, gym_id(env_cfg.task), seed=seed, num_threads=1, **overrides
    )
    return lambda: FlatState(make())


class SB3Learner(Learner):
    """SB3's PPO on ``DummyVecEnv`` over single gymnasium envs (``batched=False``, as SB3's
    users run it) or on our batched env through `SB3VecEnv` (``batched=True``)."""

    def __init__(
        self,
        env_cfg: EnvConfig,
        seed: int,
        hidden: list[int],
        gamma: float,
        n_steps: int,
        minibatches: int,
        epochs: int,
        batched: bool,
    ):
        self.name = "sb3_batched" if batched else "sb3"
        if batched:
            vec_env = SB3VecEnv(sims.make(dataclasses.replace(env_cfg, seed=seed)), keys=STATE_KEYS)
        else:
            vec_env = DummyVecEnv([single_env_factory(env_cfg, seed)] * env_cfg.num_envs)
        self.venv = VecNormalize(
            vec_env, norm_obs=True, norm_reward=False, clip_obs=10.0, gamma=gamma
        )
        kwargs: dict[str, Any] = {
            "n_steps": n_steps,
            "batch_size": env_cfg.num_envs * n_steps // minibatches,
            "n_epochs": epochs,
            "gamma": gamma,
            "policy_kwargs": {"net_arch": list(hidden)},
        }
        self.model = SB3PPO("MlpPolicy", self.venv, seed=seed, device="cpu", verbose=0, **kwargs)
        defaults = {
            k: getattr(self.model, k)
            for k in ("learning_rate", "gae_lambda", "ent_coef", "vf_coef", "max_grad_norm")
        }
        self.hyperparameters = {
            "library": "stable-baselines3",
            "vec_env": "SB3VecEnv (batched)"
            if batched
            else "DummyVecEnv of gymnasium.make(...) single envs",
            "policy": "MlpPolicy (tanh, orthogonal init, log_std_init 0)",
            "ppo": kwargs | defaults | {"clip_range": 0.2},
            "vec_normalize": {"norm_obs": True, "norm_reward": False, "clip_obs": 10.0},
            "num_envs": env_cfg.num_envs,
            "steps_per_iteration": env_cfg.num_envs * n_steps,
        }

    @property
    def env_steps(self) -> int:
        return self.model.num_timesteps

    def train_until(self, env_steps: int) -> None:
        if env_steps > self.env_steps:
            self.model.learn(total_timesteps=env_steps - self.env_steps, reset_num_timesteps=False)

    def policy(self) -> Policy:
        def act(obs: dict[str, torch.Tensor]) -> torch.Tensor:
            state = self.venv.normalize_obs(flat_state(obs).cpu().numpy())
            action, _ = self.model.predict(state, deterministic=True)
            return torch.as_tensor(action)

        return ActorForEvaluation(act)

    def close(self) -> None:
        self.venv.close()


def make_learner(name: str, cfg: TrainConfig, run_dir: Path) -> Learner:
    """Learner `name`, built and seeded from the recipe, with the random state it starts from."""
    learner = _build_learner(name, cfg, run_dir)
    learner.rng = rng_state()
    return learner


def _build_learner(name: str, cfg: TrainConfig, run_dir: Path) -> Learner:
    algo, policy = ppo_mlp_recipe(cfg)
    hidden = list(policy.hidden_sizes)
    if name == "ours":
        return OursLearner(cfg, run_dir)
    if name == "rsl_rl":
        return RslRlLearner(cfg.env, cfg.seed, hidden, algo.gamma)
    if name in ("sb3", "sb3_batched"):
        return SB3Learner(
            cfg.env,
            cfg.seed,
            hidden,
            algo.gamma,
            algo.num_steps,
            algo.num_minibatches,
            algo.update_epochs,
            batched=name == "sb3_batched",
        )
    raise ValueError(f"Unknown learner {name!r}; known: {', '.join(LEARNERS)}.")


# ---------------------------------------------------------------------------- the race
class Track:
    """One learner's side of the race: its training wall clock, evaluations, progress bar and
    random state.

    All three libraries sample actions and shuffle minibatches from the global random
    generators, so each track keeps its own state (taken right after its learner was built and
    seeded) and swaps it in for its turns: a learner then trains as it would alone, whatever
    else is in the race.
    """

    def __init__(self, learner: Learner, setup: Setup, position: int):
        self.learner = learner
        self.rng = learner.rng
        self.setup = setup
        self.wall_s = 0.0  # training only
        self.evaluations: list[dict[str, float]] = []
        self.finished = False
        self.bar = tqdm(
            total=setup.max_env_steps,
            desc=f"{learner.name:>6}",
            unit="step",
            unit_scale=True,
            dynamic_ncols=True,
            position=position,
        )

    def advance(self, env_cfg: EnvConfig) -> None:
        """Train one chunk (to the next multiple of ``eval_every`` env steps), then evaluate;
        finish at 90% success or when the budget is spent."""
        others = rng_state()
        set_rng_state(self.rng)
        try:
            self._train_and_evaluate(env_cfg)
        finally:
            self.rng = rng_state()
            set_rng_state(others)

    def _train_and_evaluate(self, env_cfg: EnvConfig) -> None:
        setup, learner = self.setup, self.learner
        target = (learner.env_steps // setup.eval_every + 1) * setup.eval_every
        start = time.perf_counter()
        learner.train_until(min(target, setup.max_env_steps))
        self.wall_s += time.perf_counter() - start
        result = evaluate_policy(
            learner.policy(), env_cfg, setup.eval_episodes, setup.eval_seed, deterministic=True
        )
        success = result["success_rate"]
        self.evaluations.append(
            {
                "env_steps": learner.env_steps,
                "wall_s": self.wall_s,
                "success_rate": success,
                "mean_return": result["mean_return"],
            }
        )
        self.bar.update(min(learner.env_steps, setup.max_env_steps) - self.bar.n)
        self.bar.set_postfix({"eval": f"{success:.0%}", "train_s": f"{self.wall_s:.0f}"})
        spent = learner.env_steps >= setup.max_env_steps or self.wall_s >= setup.max_wall_s
        self.finished = reached_target(success) or spent

    def result(self) -> dict[str, Any]:
        last = self.evaluations[-1]
        reached = reached_target(last["success_rate"])
        spent_steps = last["env_steps"] >= self.setup.max_env_steps
        return {
            "reached": reached,
            "env_steps_to_target": last["env_steps"] if reached else None,
            "wall_s_to_target": last["wall_s"] if reached else None,
            "env_steps": last["env_steps"],
            "wall_s": last["wall_s"],
            "final_success_rate": last["success_rate"],
            "train_env_steps_per_s": last["env_steps"] / last["wall_s"],
            "stopped_by": "target" if reached else ("env_steps" if spent_steps else "wall_s"),
            "evaluations": self.evaluations,
            "hyperparameters": self.learner.hyperparameters,
        }


def race(learners: list[Learner], setup: Setup, env_cfg: EnvConfig) -> dict[str, dict[str, Any]]:
    """Advance the learners one chunk each in turn until each has finished. Interleaving makes
    load from other processes on a shared machine fall on all of them alike."""
    tracks = [Track(learner, setup, i) for i, learner in enumerate(learners)]
    while not all(track.finished for track in tracks):
        for track in tracks:
            if not track.finished:
                track.advance(env_cfg)
                if track.finished:
                    track.bar.write(summary_line(track.learner.name, track.result()))
    for track in tracks:
        track.bar.close()
    return {track.learner.name: track.result() for track in tracks}


def speedup(ours: dict[str, Any] | None, peer: dict[str, Any] | None) -> tuple[float | None, str]:
    """peer's wall s to 90% / ours, and what it is: exact, or a bound from a budget run out."""
    if ours is None or peer is None:
        return None, "not_run"
    if ours["reached"] and peer["reached"]:
        return peer["wall_s_to_target"] / ours["wall_s_to_target"], "exact"
    if ours["reached"]:
        return peer["wall_s"] / ours["wall_s_to_target"], "lower_bound"
    if peer["reached"]:
        return peer["wall_s_to_target"] / ours["wall_s"], "upper_bound"
    return None, "neither_reached"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="Reach instead of PickCube (a few minutes)"
    )
    parser.add_argument("--learners", nargs="*", choices=LEARNERS, default=list(LEARNERS))
    parser.add_argument(
        "--max-env-steps", type=int, help="budget per learner (default: the setup's)"
    )
    parser.add_argument(
        "--max-wall-s", type=float, help="training seconds per learner (default: the setup's)"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch threads for all learners (1: small MLPs gain nothing from more, and spinning "
        "OpenMP threads collide with the physics thread pool on a loaded machine)",
    )
    args = parser.parse_args()

    setup = QUICK if args.quick else FULL
    setup = dataclasses.replace(
        setup,
        max_env_steps=args.max_env_steps or setup.max_env_steps,
        max_wall_s=args.max_wall_s or setup.max_wall_s,
    )
    cfg = load_config(
        TrainConfig, ROOT / setup.config, [f"name=ppo_vs_peers_{Path(setup.config).stem}"]
    )
    torch.set_num_threads(args.torch_threads)
    machine = machine_info()
    print(
        f"{cfg.env.task}, state obs, {cfg.env.num_envs} envs, seed {cfg.seed}: time to {TARGET_SUCCESS:.0%} held-out "
        f"success ({setup.eval_episodes} episodes, seed {setup.eval_seed}, every ~{setup.eval_every:,} env steps); "
        f"budget {setup.max_env_steps:,} env steps or {setup.max_wall_s:.0f} training s per learner",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="ppo_vs_peers_") as run_dir:
        learners = [make_learner(name, cfg, Path(run_dir) / name) for name in args.learners]
        results = race(learners, setup, cfg.env)
        for learner in learners:
            learner.close()

    ratios = {peer: speedup(results.get("ours"), results.get(peer)) for peer in PEERS}
    print_table(results)
    for peer, (ratio, kind) in ratios.items():
        if kind != "exact":
            print(
                f"speedup_vs_{peer}: {kind.replace('_', ' ')}"
                + (f" ({ratio:.2f})" if ratio is not None else "")
            )
    path = write_result(
        "ppo_vs_peers" + ("_quick" if args.quick else ""),
        {
            "task": cfg.env.task,
            "obs_mode": cfg.env.obs_mode,
            "config": setup.config,
            "quick": args.quick,
            "seed": cfg.seed,
            "env": to_dict(cfg.env),
            "target_success": TARGET_SUCCESS,
            "setup": dataclasses.asdict(setup),
            "wall_clock": "training only (rollouts + updates), excluding evaluation and construction",
            "torch_threads": torch.get_num_threads(),
            "learners": results,
            **{f"speedup_vs_{peer}": ratio for peer, (ratio, _) in ratios.items()},
            **{f"speedup_vs_{peer}_kind": kind for peer, (_, kind) in ratios.items()},
            "targets": {"speedup_vs_sb3": 3.0, "speedup_vs_rsl_rl": 1.0},
            "speedup_vs_sb3_batched_note": "SB3 on our batched env: the algorithms alone, no target",
        },
        machine,
    )
    print(f"wrote {path}")
    print(
        "RESULT "
        + " ".join(f"speedup_vs_{peer}={fmt(ratios[peer][0], '.2f')}" for peer in ("sb3", "rsl_rl"))
    )


def fmt(value: float | None, spec: str) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and np.isnan(value))
        else format(value, spec)
    )


def summary_line(name: str, result: dict[str, Any]) -> str:
    if result["reached"]:
        return (
            f"{name}: {TARGET_SUCCESS:.0%} at {result['env_steps_to_target']:,} env steps, "
            f"{result['wall_s_to_target']:.1f} s training"
        )
    return (
        f"{name}: not reached ({result['final_success_rate']:.0%} at {result['env_steps']:,} env steps, "
        f"{result['wall_s']:.1f} s training; budget of {result['stopped_by']} spent)"
    )


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print(
        f"{'learner':>11} {'reached':>8} {'env steps to 90%':>17} {'wall s to 90%':>14} {'final success':>14} "
        f"{'train steps/s':>14}"
    )
    for name, r in results.items():
        print(
            f"{name:>11} {'yes' if r['reached'] else 'no':>8} {fmt(r['env_steps_to_target'], ','):>17} "
            f"{fmt(r['wall_s_to_target'], '.1f'):>14} {r['final_success_rate']:>14.0%} "
            f"{r['train_env_steps_per_s']:>14,.0f}"
        )


if __name__ == "__main__":
    main()
