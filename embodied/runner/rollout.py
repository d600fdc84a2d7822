"""Collect on-policy rollouts from a batched env into (S, N, ...) tensors.

A decision emits a chunk of T actions; the env executes them one by one and the decision's
reward is the sum of the chunk's rewards up to the first episode end (rewards after it
belong to the next episode and are dropped). A truncated (not terminated) episode is
bootstrapped from its final observation: r += gamma * V(s_final), so GAE can treat every
episode end alike.

A decision is two halves: the policy's inference (`policy.act`, main thread) and the chunk's
physics and rendering (`run_chunk`). With a `StagedEnv` the second half of one stage can run
on the stage's thread while the policy decides for the next stage (`rollout.mode: pipelined`,
RLinf's hybrid pipeline on one machine).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np
import torch

from policies.base import Policy
from sims.core import BatchedEnv, Obs


def tensor_obs(obs: Obs) -> dict[str, torch.Tensor]:
    """The tensor features of an observation (drops the instruction strings)."""
    return {k: v for k, v in obs.items() if isinstance(v, torch.Tensor)}


def stack_obs(observations: list[Obs]) -> dict[str, Any]:
    """S observation batches -> {key: (S, N, ...) tensor}, with the instructions as an (S, N)
    object array under "task" (a VLA's `evaluate` needs them again)."""
    stacked: dict[str, Any] = {k: torch.stack([o[k] for o in observations]) for k in tensor_obs(observations[0])}
    if "task" in observations[0]:
        stacked["task"] = np.array([list(o["task"]) for o in observations], dtype=object)
    return stacked


def gather_obs(obs: dict[str, Any], index: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """The (step, env) pairs `index` of a stacked (S, N, ...) observation, flattened to (B, ...)
    with the instructions as a (B,) object array (what `select_obs` reads)."""
    rows: dict[str, Any] = {k: v[index] for k, v in obs.items() if isinstance(v, torch.Tensor)}
    if "task" in obs:
        rows["task"] = obs["task"][index[0].cpu().numpy(), index[1].cpu().numpy()]
    return rows


def concat_obs(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate flattened observation batches (tensors and instruction arrays)."""
    return {
        k: torch.cat([b[k] for b in batches]) if isinstance(batches[0][k], torch.Tensor)
        else np.concatenate([b[k] for b in batches])
        for k in batches[0]
    }


def select_obs(obs: dict[str, Any], index: torch.Tensor) -> Obs:
    """Rows `index` of a flattened observation batch; instructions come back as a list."""
    rows: Obs = {k: v[index] for k, v in obs.items() if isinstance(v, torch.Tensor)}
    if "task" in obs:
        rows["task"] = list(obs["task"][index.cpu().numpy()])
    return rows


class ChunkRunner:
    """Executes a policy's chunks step by step in N envs, `horizon` actions of each: an env
    gets a fresh chunk (one batched `act` over the envs that need one) when it has used
    `horizon` actions of its current one or its episode ended. With horizon 1 it is `act` at
    every step (a receding horizon: the chunk's first action).

    `current(obs)` is each env's action now and its phase (the action's index in its chunk);
    `advance(done)` moves to the next step; calling the runner does both."""

    def __init__(self, policy: Policy, num_envs: int, horizon: int, deterministic: bool = False):
        self.policy, self.num_envs, self.horizon, self.deterministic = policy, num_envs, horizon, deterministic
        self.queue: torch.Tensor | None = None  # (N, T, A)
        self.index = torch.full((num_envs,), horizon, dtype=torch.long)  # each env's position in its chunk

    @torch.no_grad()
    def current(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, A) the action of each env now, fetching fresh chunks where needed, and (N,) its phase."""
        need = (self.index >= self.horizon).nonzero()[:, 0]
        if len(need):
            rows = obs if len(need) == self.num_envs else select_obs(_instructions_as_array(obs), need)
            chunk = self.policy.act(rows, deterministic=self.deterministic).action.clamp(-1, 1)
            if chunk.shape[1] < self.horizon:
                raise ValueError(f"The policy emits chunks of {chunk.shape[1]}; {self.horizon} of each cannot run.")
            if self.queue is None:
                self.queue = torch.zeros(self.num_envs, *chunk.shape[1:], device=chunk.device)
            self.queue[need.to(chunk.device)] = chunk
            self.index[need] = 0
        queue = self.queue
        assert queue is not None  # the first call fetches every env's chunk (index starts at horizon)
        return queue[torch.arange(self.num_envs), self.index.to(queue.device)], self.index.clone()

    def advance(self, done: torch.Tensor | None = None) -> None:
        """One step on; envs whose episode ended (`done` (N,)) start their next one with a fresh chunk."""
        self.index += 1
        if done is not None:
            self.ended(done)

    def ended(self, done: torch.Tensor) -> None:
        """Envs whose episode ended start their next one with a fresh chunk."""
        self.index[done.cpu()] = self.horizon

    def __call__(self, obs: Obs) -> torch.Tensor:
        action, _ = self.current(obs)
        self.advance()
        return action

    def state_dict(self) -> dict[str, Any]:
        return {"queue": self.queue, "index": self.index.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queue, self.index = state["queue"], state["index"].clone()


def _instructions_as_array(obs: Obs) -> dict[str, Any]:
    """An observation batch with the instructions as an object array (what `select_obs` reads)."""
    return {k: np.array(v, dtype=object) if k == "task" else v for k, v in obs.items()}


@dataclasses.dataclass
class EpisodeTracker:
    """Running return/length/success per env, and the finished episodes' statistics. An
    episode counts as a success if the task was solved at any step (ManiSkill's success_once),
    which is the same as success at the end when episodes terminate on success.

    `sources` names what each env runs (its task, or a task/backend/data-source label); the
    finished episodes carry it so metrics can be split per task and per source."""

    num_envs: int
    device: torch.device
    sources: list[str] | None = None

    def __post_init__(self) -> None:
        self.returns = torch.zeros(self.num_envs, device=self.device)
        self.lengths = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self.succeeded = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self.finished: list[dict[str, Any]] = []  # return, length, success; source (a str)

    def step(self, reward: torch.Tensor, done: torch.Tensor, success: torch.Tensor, rows: slice = slice(None)) -> None:
        """One env step of the envs `rows` (all by default)."""
        returns, lengths, succeeded = self.returns[rows], self.lengths[rows], self.succeeded[rows]  # views
        returns += reward
        lengths += 1
        succeeded |= success
        first = rows.start or 0
        for i in done.nonzero()[:, 0].tolist():
            self.finished.append({
                "return": float(returns[i]), "length": int(lengths[i]), "success": float(succeeded[i]),
                "source": self.sources[first + i] if self.sources else "",
            })
        returns[done] = 0.0
        lengths[done] = 0
        succeeded[done] = False

    def record(self, returns: torch.Tensor, lengths: torch.Tensor, success: torch.Tensor) -> None:
        """Finished episodes counted by the caller, one per env (GRPO's groups run each env for
        exactly one episode; counting the episodes that auto-reset envs run meanwhile would
        over-count short, successful ones)."""
        for i in range(returns.shape[0]):
            self.finished.append({
                "return": float(returns[i]), "length": int(lengths[i]), "success": float(success[i]),
                "source": self.sources[i] if self.sources else "",
            })

    def pop(self) -> list[dict[str, Any]]:
        finished, self.finished = self.finished, []
        return finished

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"returns": self.returns.clone(), "lengths": self.lengths.clone(), "succeeded": self.succeeded.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.returns.copy_(state["returns"])
        self.lengths.copy_(state["lengths"])
        self.succeeded.copy_(state["succeeded"])


def run_chunk(env: BatchedEnv, actions: torch.Tensor) -> list[tuple]:
    """Execute a chunk of actions (N, T, A) step by step; the raw step results, in order. (The
    physics/rendering half of a decision: a pipeline stage runs it on the stage's thread.)"""
    return [env.step(actions[:, t]) for t in range(actions.shape[1])]


def account_chunk(
    steps: list[tuple], policy: Policy, value: torch.Tensor | None, gamma: float, tracker: EpisodeTracker,
    rows: slice,
) -> tuple[Obs, torch.Tensor, torch.Tensor]:
    """A chunk's decision reward (summed up to the first episode end, a truncated episode
    bootstrapped with gamma * V(final obs)) and done flag, and the obs after it; the finished
    episodes go to `tracker` (rows: where these envs sit in the tracker's batch)."""
    n = steps[0][1].shape[0]
    device = steps[0][1].device
    reward_sum = torch.zeros(n, device=device)
    ended = torch.zeros(n, dtype=torch.bool, device=device)
    for _, reward, terminated, truncated, info in steps:
        live = ~ended
        done = (terminated | truncated) & live
        timeout = truncated & ~terminated & live
        bootstrap = torch.zeros(n, device=device)
        if timeout.any() and value is not None:
            bootstrap[timeout] = gamma * _value(policy, info["final_observation"], n, device)[timeout]
        reward_sum += torch.where(live, reward, 0.0) + bootstrap
        tracker.step(reward, terminated | truncated, info["success"], rows)
        ended |= done
    return steps[-1][0], reward_sum, ended


class StagedEnv(Protocol):
    """An env whose stages step elsewhere (`embodied.distributed.RemoteEnv`'s env workers): what
    `collect_rollout` needs of it beyond a `BatchedEnv`'s size and device."""

    num_envs: int
    device: torch.device
    stages: list[Any]
    pipelined: bool

    def submit(self, stage: int, fn: Any, actions: torch.Tensor) -> Any: ...


@torch.no_grad()
def collect_rollout(
    env: BatchedEnv | StagedEnv, policy: Policy, obs: Obs, num_steps: int, gamma: float, tracker: EpisodeTracker,
    update_normalizer: bool = True, pipelined: bool | None = None,
) -> tuple[dict[str, Any], Obs, torch.Tensor]:
    """Run `num_steps` decisions in every env.

    A `StagedEnv` is worked stage by stage: the policy decides for stage 0, the stage's chunk
    runs on its thread, the policy decides for stage 1, ... With `pipelined`, a stage's chunk
    runs while the policy decides for the next stages (inference overlaps physics and
    rendering); without, each chunk finishes before the next decision. The order of every
    computation that draws random numbers or updates statistics is the same in both modes, so
    they give identical rollouts. A plain env is one stage.

    Returns the rollout {obs: {key: (S, N, ...)}, actions (S, N, T, A), log_probs, values,
    rewards, dones (S, N), extras}, the observation after the last step, and the value of it (N,).
    """
    stages = getattr(env, "stages", [env])
    size = env.num_envs // len(stages)
    rows = [slice(s * size, (s + 1) * size) for s in range(len(stages))]
    if pipelined is None:
        pipelined = getattr(env, "pipelined", False)
    submit = getattr(env, "submit", None) if pipelined else None
    stage_obs = [select_rows(obs, r) for r in rows]
    pending: list[Any] = [None] * len(stages)  # per stage: (future or step results, its decision)
    decisions: list[list] = []  # per step: per stage (obs, PolicyOutput)
    results: list[list] = [[] for _ in stages]  # per stage: per step (reward, done)

    def finish(s: int) -> None:
        work, out = pending[s]
        steps = work.result() if submit is not None else work
        stage_obs[s], reward, done = account_chunk(steps, policy, out.value, gamma, tracker, rows[s])
        results[s].append((reward, done))

    for _ in range(num_steps):
        outputs = []
        for s, stage in enumerate(stages):
            if pending[s] is not None:
                finish(s)
            if update_normalizer:
                policy.observe(stage_obs[s])
            out = policy.act(stage_obs[s])
            outputs.append((stage_obs[s], out))
            pending[s] = (submit(s, run_chunk, out.action) if submit is not None else run_chunk(stage, out.action), out)
        decisions.append(outputs)
    for s in range(len(stages)):
        finish(s)

    def step_cat(step: list, get) -> torch.Tensor:
        return torch.cat([get(o) for o in step])

    obs_steps = [concat_observations([o for o, _ in step]) for step in decisions]
    outs = [[out for _, out in step] for step in decisions]
    rollout = {
        "obs": stack_obs(obs_steps),
        "actions": torch.stack([step_cat(step, lambda o: o.action) for step in outs]),
        "log_probs": torch.stack([step_cat(step, lambda o: o.log_prob) for step in outs]),
        "values": torch.stack([
            step_cat(step, lambda o: o.value if o.value is not None else torch.zeros(o.action.shape[0], device=env.device))
            for step in outs
        ]),
        "rewards": torch.stack([torch.cat([results[s][k][0] for s in range(len(stages))]) for k in range(num_steps)]),
        "dones": torch.stack([torch.cat([results[s][k][1] for s in range(len(stages))]) for k in range(num_steps)]),
        "extras": {
            key: torch.stack([step_cat(step, lambda o, key=key: o.extras[key]) for step in outs])
            for key in outs[0][0].extras
        },
    }
    next_value = torch.cat([_value(policy, o, size, env.device) for o in stage_obs])
    return rollout, concat_observations(stage_obs), next_value


def select_rows(obs: Obs, rows: slice) -> Obs:
    """Envs `rows` of an observation batch."""
    return {k: v[rows] for k, v in obs.items()}


def concat_observations(parts: list[Obs]) -> Obs:
    """Observation batches of consecutive env slices -> one batch."""
    if len(parts) == 1:
        return parts[0]
    return {k: torch.cat([p[k] for p in parts]) if isinstance(parts[0][k], torch.Tensor) else [x for p in parts for x in p[k]]
            for k in parts[0]}


def _value(policy: Policy, obs: Obs, n: int, device: torch.device) -> torch.Tensor:
    """V(obs) (N,) of a policy with a value head (a `value` method); zeros for one without."""
    value = getattr(policy, "value", None)
    return value(obs) if value is not None else torch.zeros(n, device=device)
