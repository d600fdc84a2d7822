"""A replay buffer on the env's device for off-policy RL, with n-step returns, demo/online
mixing and LeRobot dataset import/export.

Storage is time-major, one column per env: every field is a ring of shape (capacity, N, ...)
where N is the number of envs that write to it (1 for a buffer loaded from a dataset, whose
episodes are laid end to end). A transition at (t, i) holds

    obs          the observation the action was taken at       {key: (capacity, N, *shape_key)}
                 (float32, or the key's dtype in `obs_dtypes`: uint8 for images)
    action       (capacity, N, A)                              float32 in env units
    reward       (capacity, N)                                 float32
    terminated   (capacity, N) bool: the episode ended in a terminal state (no bootstrap)
    done         (capacity, N) bool: the episode ended (terminated or truncated)
    next_obs     the observation after the step (the final one when the episode ended)
    intervention (capacity, N) bool: a human/safety takeover produced this action
    task         (capacity, N) index into `task_names` of the instruction (when the
                 observations written carry `task`, a VLA's); sampled batches give it back
                 as `obs["task"]` and `next_obs["task"]` (lists of strings: an n-step
                 bootstrap never leaves its episode, so its instruction is the same)

n-step targets are assembled when sampling: from (t, i), follow column i forward while the
episode lasts, up to n steps and never past the newest transition,

    R = sum_{k<m} gamma^k r_{t+k},   discount = gamma^m (1 - terminated_{t+m-1}),
    bootstrap observation = next_obs_{t+m-1},

so that target = R + discount * Q'(bootstrap obs, .). A truncated episode keeps its discount
(it is bootstrapped from its final observation).

Action chunks (`chunk=T` when sampling, for a policy that emits T actions per decision):
the batch also carries `action_chunk` (B, T, A) = a_t..a_{t+T-1}, read forward along the
same column while the episode lasts and never past the newest transition; the steps beyond
that are padded with the last real action and flagged in `action_is_pad` (B, T). With
n_step = T the target is then that of the chunk: Q(s_t, a_t..a_{t+T-1}) bootstrapped at
s_{t+T} (or earlier at the episode's end).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

OBS_KEYS = ("observation.state", "observation.environment_state")


class ReplayBuffer:
    """Fixed-capacity ring of transitions from N envs (see the module docstring for fields)."""

    def __init__(self, capacity: int, num_envs: int, obs_shapes: dict[str, tuple[int, ...]], action_dim: int,
                 device: torch.device | str = "cpu", obs_dtypes: dict[str, torch.dtype] | None = None):
        if capacity <= 0 or num_envs <= 0:
            raise ValueError(f"capacity and num_envs must be positive; got {capacity}, {num_envs}.")
        self.capacity, self.num_envs, self.device = capacity, num_envs, torch.device(device)
        self.obs_shapes = {k: tuple(s) for k, s in obs_shapes.items()}
        self.action_dim = action_dim
        self.obs_dtypes = {k: (obs_dtypes or {}).get(k, torch.float32) for k in self.obs_shapes}

        def zeros(*shape, dtype=torch.float32):
            return torch.zeros(capacity, num_envs, *shape, dtype=dtype, device=self.device)

        self.obs = {k: zeros(*s, dtype=self.obs_dtypes[k]) for k, s in self.obs_shapes.items()}
        self.next_obs = {k: zeros(*s, dtype=self.obs_dtypes[k]) for k, s in self.obs_shapes.items()}
        self.action = zeros(action_dim)
        self.reward = zeros()
        self.terminated = zeros(dtype=torch.bool)
        self.done = zeros(dtype=torch.bool)
        self.intervention = zeros(dtype=torch.bool)
        self.task = zeros(dtype=torch.long)
        self.task_names: list[str] = []
        # Monte-Carlo return-to-go where known (a dataset's, see `returns_to_go`), else -inf
        self.return_to_go = torch.full((capacity, num_envs), float("-inf"), device=self.device)
        self.pos = 0  # the next time slot to write
        self.full = False

    # ------------------------------------------------------------------ writing
    def __len__(self) -> int:
        """Transitions held (time slots x envs)."""
        return (self.capacity if self.full else self.pos) * self.num_envs

    @property
    def steps(self) -> int:
        """Time slots held."""
        return self.capacity if self.full else self.pos

    def add(self, obs: dict[str, torch.Tensor], action: torch.Tensor, reward: torch.Tensor, terminated: torch.Tensor,
            truncated: torch.Tensor, next_obs: dict[str, torch.Tensor], intervention: torch.Tensor | None = None) -> None:
        """One batched step of all N envs: obs/next_obs {key: (N, D)}, action (N, A), reward,
        terminated, truncated (N,). `next_obs` must be the final observation of envs whose
        episode ended (not the auto-reset one)."""
        t = self.pos
        for k in self.obs_shapes:
            dtype = self.obs_dtypes[k]
            self.obs[k][t] = obs[k].to(self.device, dtype).reshape(self.num_envs, *self.obs_shapes[k])
            self.next_obs[k][t] = next_obs[k].to(self.device, dtype).reshape(self.num_envs, *self.obs_shapes[k])
        self.action[t] = action.to(self.device, torch.float32).reshape(self.num_envs, self.action_dim)
        self.reward[t] = reward.to(self.device, torch.float32)
        self.terminated[t] = terminated.to(self.device, torch.bool)
        self.done[t] = (terminated | truncated).to(self.device, torch.bool)
        self.intervention[t] = False if intervention is None else intervention.to(self.device, torch.bool)
        if "task" in obs:
            self.task[t] = torch.tensor([self.task_id(name) for name in obs["task"]], device=self.device)
        self.pos = (self.pos + 1) % self.capacity
        self.full = self.full or self.pos == 0

    def add_obs_field(self, key: str, values: torch.Tensor, next_values: torch.Tensor) -> None:
        """A new float observation field over the whole ring: `values` and `next_values`
        (capacity, N, *shape) for obs and next_obs (what the env did not observe: a frozen
        base policy's action at each state)."""
        if values.shape[:2] != (self.capacity, self.num_envs) or next_values.shape != values.shape:
            raise ValueError(f"Field {key!r} needs ({self.capacity}, {self.num_envs}, ...) values for obs and next_obs; "
                             f"got {tuple(values.shape)} and {tuple(next_values.shape)}.")
        self.obs_shapes[key] = tuple(values.shape[2:])
        self.obs_dtypes[key] = torch.float32
        self.obs[key] = values.to(self.device, torch.float32)
        self.next_obs[key] = next_values.to(self.device, torch.float32)

    def task_id(self, name: str) -> int:
        """The index of an instruction in `task_names` (added when new)."""
        if name not in self.task_names:
            self.task_names.append(name)
        return self.task_names.index(name)

    # ------------------------------------------------------------------ sampling
    def _ahead(self, t: torch.Tensor) -> torch.Tensor:
        """Transitions stored from slot t onward in its column, t itself included."""
        if self.full:
            return (self.pos - t - 1) % self.capacity + 1
        return self.pos - t

    def sample_index(self, batch_size: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform (time, env) indices (B,), (B,) of stored transitions."""
        if len(self) == 0:
            raise ValueError("Cannot sample from an empty replay buffer.")
        t = torch.randint(self.steps, (batch_size,), generator=generator)
        env = torch.randint(self.num_envs, (batch_size,), generator=generator)
        return t.to(self.device), env.to(self.device)

    def gather(self, t: torch.Tensor, env: torch.Tensor, n_step: int = 1, gamma: float = 0.99,
               chunk: int = 0) -> dict[str, Any]:
        """The transitions (t, env) with their n-step return, discount and bootstrap observation:
        {obs, action, reward (1-step), n_step_reward, discount, next_obs (n-step bootstrap),
        terminated, done, intervention, return_to_go}; every value (B, ...). `chunk` = T > 0
        adds `action_chunk` (B, T, A) and `action_is_pad` (B, T) (see the module docstring)."""
        ahead = self._ahead(t)
        extra = self.action_chunk(t, env, ahead, chunk) if chunk > 0 else {}
        n_return = torch.zeros(t.shape[0], device=self.device)
        discount = torch.ones(t.shape[0], device=self.device)
        last = t.clone()  # slot of the last transition the return uses
        alive = torch.ones(t.shape[0], dtype=torch.bool, device=self.device)
        for k in range(n_step):
            alive = alive & (ahead > k)
            slot = (t + k) % self.capacity
            n_return = n_return + torch.where(alive, discount * self.reward[slot, env], 0.0)
            discount = torch.where(alive, discount * gamma, discount)
            last = torch.where(alive, slot, last)
            alive = alive & ~self.done[slot, env]
        discount = discount * (~self.terminated[last, env]).float()
        obs = {k: v[t, env] for k, v in self.obs.items()}
        next_obs = {k: v[last, env] for k, v in self.next_obs.items()}
        if self.task_names:
            obs["task"] = next_obs["task"] = [self.task_names[i] for i in self.task[t, env].tolist()]
        return {
            "obs": obs,
            "action": self.action[t, env],
            "reward": self.reward[t, env],
            "n_step_reward": n_return,
            "discount": discount,
            "next_obs": next_obs,
            "terminated": self.terminated[t, env],
            "done": self.done[t, env],
            "intervention": self.intervention[t, env],
            "return_to_go": self.return_to_go[t, env],
            **extra,
        }

    def action_chunk(self, t: torch.Tensor, env: torch.Tensor, ahead: torch.Tensor, chunk: int) -> dict[str, torch.Tensor]:
        """a_t..a_{t+T-1} (B, T, A) within the episode and the stored data, padded with the last
        real action, and the padding flags (B, T)."""
        actions, pads = [], []
        alive = torch.ones(t.shape[0], dtype=torch.bool, device=self.device)
        slot = t.clone()
        for k in range(chunk):
            if k > 0:
                alive = alive & ~self.done[slot, env] & (ahead > k)
                slot = torch.where(alive, (t + k) % self.capacity, slot)
            actions.append(self.action[slot, env])
            pads.append(~alive)
        return {"action_chunk": torch.stack(actions, 1), "action_is_pad": torch.stack(pads, 1)}

    def sample(self, batch_size: int, n_step: int = 1, gamma: float = 0.99,
               generator: torch.Generator | None = None, chunk: int = 0) -> dict[str, Any]:
        """A uniform batch with n-step targets (see `gather`)."""
        return self.gather(*self.sample_index(batch_size, generator), n_step=n_step, gamma=gamma, chunk=chunk)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"obs": self.obs, "next_obs": self.next_obs, "action": self.action, "reward": self.reward,
                "terminated": self.terminated, "done": self.done, "intervention": self.intervention,
                "task": self.task, "task_names": list(self.task_names), "pos": self.pos, "full": self.full}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self.obs:
            self.obs[k].copy_(state["obs"][k])
            self.next_obs[k].copy_(state["next_obs"][k])
        for name in ("action", "reward", "terminated", "done", "intervention"):
            getattr(self, name).copy_(state[name])
        if "task" in state:
            self.task.copy_(state["task"])
            self.task_names = list(state["task_names"])
        self.pos, self.full = state["pos"], state["full"]

    # ------------------------------------------------------------------ episodes
    def episodes(self) -> list[dict[str, torch.Tensor]]:
        """The complete episodes held, oldest first, column by column: each {field: (L, ...)}
        with obs keys flattened in (a partial episode at either end of a ring is left out)."""
        order = torch.arange(self.steps) if not self.full else (torch.arange(self.capacity) + self.pos) % self.capacity
        found = []
        for env in range(self.num_envs):
            start = 0
            done = self.done[order, env].cpu()
            ends = done.nonzero()[:, 0].tolist()
            for end in ends:
                rows = order[start : end + 1]
                if start > 0 or not self.full or _starts_episode(self, rows[0], env):
                    found.append(self._rows(rows, env))
                start = end + 1
        return found

    def _rows(self, rows: torch.Tensor, env: int) -> dict[str, torch.Tensor]:
        episode = {k: v[rows, env] for k, v in self.obs.items()}
        episode |= {f"next.{k}": v[rows, env] for k, v in self.next_obs.items()}
        for name in ("action", "reward", "terminated", "done", "intervention"):
            episode[name] = getattr(self, name)[rows, env]
        return episode


def _starts_episode(buffer: ReplayBuffer, slot: torch.Tensor, env: int) -> bool:
    """In a full ring, whether the oldest slot begins an episode (the slot before it, the
    newest, ended one)."""
    before = (int(slot) - 1) % buffer.capacity
    return bool(buffer.done[before, env])


def sample_mixed(online: ReplayBuffer, offline: ReplayBuffer | None, batch_size: int, offline_fraction: float = 0.5,
                 n_step: int = 1, gamma: float = 0.99, generator: torch.Generator | None = None,
                 chunk: int = 0) -> dict[str, Any]:
    """RLPD-style symmetric sampling: round(batch_size * offline_fraction) transitions from the
    offline/demo buffer, the rest from the online one, concatenated (offline first) with a
    boolean `from_offline` (B,). Without an offline buffer (or a fraction of 0) all come from
    online; with an empty online buffer all come from offline."""
    n_offline = 0 if offline is None or len(offline) == 0 else round(batch_size * offline_fraction)
    if len(online) == 0:
        if offline is None or len(offline) == 0:
            raise ValueError("Both replay buffers are empty.")
        n_offline = batch_size
    parts = []
    if n_offline and offline is not None:
        parts.append(offline.sample(n_offline, n_step, gamma, generator, chunk))
    if batch_size - n_offline:
        parts.append(online.sample(batch_size - n_offline, n_step, gamma, generator, chunk))
    batch = concat_batches(parts)
    device = parts[0]["reward"].device
    batch["from_offline"] = torch.arange(batch_size, device=device) < n_offline
    return batch


def concat_batches(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate sampled batches field by field (obs dicts key by key)."""
    if len(parts) == 1:
        return dict(parts[0])
    out: dict[str, Any] = {}
    for key, value in parts[0].items():
        if isinstance(value, dict):
            out[key] = {k: torch.cat([p[key][k] for p in parts]) if isinstance(v, torch.Tensor)
                        else [x for p in parts for x in p[key][k]] for k, v in value.items()}
        else:
            out[key] = torch.cat([p[key] for p in parts])
    return out


# ---------------------------------------------------------------------- LeRobot datasets
def from_lerobot(root: str | Path, obs_keys: tuple[str, ...] = OBS_KEYS, episodes: list[int] | None = None,
                 device: torch.device | str = "cpu", progress: bool = False, reward: str = "dataset") -> ReplayBuffer:
    """A one-column buffer holding a LeRobot dataset's episodes end to end.

    Needs `action`, `next.reward` and `next.done`; `complementary_info.is_intervention` is
    read when present. Image keys (`observation.images.*`) are held as uint8 (H, W, 3); each
    frame's instruction is kept (the buffer's `task` column). The last frame of an episode is `terminated` when the dataset says
    so (`next.terminated`) or, failing that, when it succeeded (`next.success`, the envs end
    episodes on success) or, failing both, always; its next observation is its own (there is
    none after it: with terminated the value is not used). Inside an episode next_obs is the
    following frame. `reward="success"` relabels the rewards as the sparse 0/1 of
    `next.success` (for demos recorded with dense rewards and an online run with sparse ones)."""
    from embodied.data.dataset import DatasetMismatchError, DemoDataset

    probe = _features(root)
    missing = [k for k in (*obs_keys, "action", "next.reward", "next.done") if k not in probe]
    if missing:
        raise DatasetMismatchError(f"{root} lacks {missing} for off-policy RL; it has {', '.join(sorted(probe))}.")
    if reward not in ("dataset", "success"):
        raise ValueError(f"reward must be 'dataset' or 'success'; got {reward!r}.")
    if reward == "success" and "next.success" not in probe:
        raise DatasetMismatchError(f"{root} has no next.success to relabel rewards from.")
    optional = [k for k in ("next.terminated", "next.success", "complementary_info.is_intervention") if k in probe]
    data = DemoDataset(root, keys=[*obs_keys, "action", "next.reward", "next.done", *optional], episodes=episodes,
                       progress=progress)
    frames = len(data)
    done = data.data["next.done"].reshape(frames).bool()
    episode_change = torch.zeros(frames, dtype=torch.bool)
    episode_change[:-1] = data.episode_index[1:] != data.episode_index[:-1]
    episode_change[-1] = True
    done = done | episode_change  # an episode's last frame always ends it
    if "next.terminated" in data.data:
        terminal = data.data["next.terminated"].reshape(frames).bool()
    elif "next.success" in data.data:
        terminal = data.data["next.success"].reshape(frames).bool()
    else:
        terminal = torch.ones(frames, dtype=torch.bool)
    terminated = done & terminal
    buffer = ReplayBuffer(frames, 1, {k: tuple(data.data[k].shape[1:]) for k in obs_keys}, data.data["action"].shape[1], device,
                          obs_dtypes={k: data.data[k].dtype for k in obs_keys if data.data[k].dtype == torch.uint8})
    following = torch.minimum(torch.arange(frames) + 1, torch.tensor(frames - 1))
    following = torch.where(done, torch.arange(frames), following)
    for k in obs_keys:
        buffer.obs[k][:, 0] = data.data[k].to(buffer.device)
        buffer.next_obs[k][:, 0] = data.data[k][following].to(buffer.device)
    buffer.action[:, 0] = data.data["action"].to(buffer.device)
    rewards = data.data["next.success" if reward == "success" else "next.reward"].reshape(frames)
    buffer.reward[:, 0] = rewards.float().to(buffer.device)
    buffer.terminated[:, 0] = terminated.to(buffer.device)
    buffer.done[:, 0] = done.to(buffer.device)
    if "complementary_info.is_intervention" in data.data:
        buffer.intervention[:, 0] = data.data["complementary_info.is_intervention"].reshape(frames).bool().to(buffer.device)
    buffer.pos, buffer.full = 0, True
    buffer.task[:, 0] = torch.tensor([buffer.task_id(name) for name in data.tasks], device=buffer.device)
    return buffer


def _features(root: str | Path) -> dict[str, Any]:
    import json

    info = Path(root) / "meta" / "info.json"
    if not info.is_file():
        raise FileNotFoundError(f"{root} is not a LeRobotDataset (no meta/info.json).")
    return json.loads(info.read_text())["features"]


def to_lerobot(buffer: ReplayBuffer, root: str | Path, fps: int = 20, task: str = "", repo_id: str = "local/replay",
               robot_type: str = "panda") -> int:
    """Write the buffer's complete episodes as a LeRobotDataset (state features only) with
    `action`, `next.reward`, `next.done`, `next.terminated` and
    `complementary_info.is_intervention`; returns the number of episodes written. The last
    frame's next observation is not stored (LeRobot frames hold the observation before a step)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    episodes = buffer.episodes()
    if not episodes:
        raise ValueError("The replay buffer holds no complete episode to export.")
    features: dict[str, dict] = {k: {"dtype": "float32", "shape": s, "names": None} for k, s in buffer.obs_shapes.items()}
    features["action"] = {"dtype": "float32", "shape": (buffer.action_dim,), "names": None}
    features["next.reward"] = {"dtype": "float32", "shape": (1,), "names": None}
    for key in ("next.done", "next.terminated", "complementary_info.is_intervention"):
        features[key] = {"dtype": "bool", "shape": (1,), "names": None}
    dataset = LeRobotDataset.create(repo_id, fps=fps, features=features, root=Path(root), robot_type=robot_type,
                                    use_videos=False)
    try:
        for episode in episodes:
            for i in range(episode["action"].shape[0]):
                frame: dict[str, Any] = {k: episode[k][i].cpu().numpy().astype(np.float32) for k in buffer.obs_shapes}
                frame["action"] = episode["action"][i].cpu().numpy().astype(np.float32)
                frame["next.reward"] = np.array([float(episode["reward"][i])], dtype=np.float32)
                frame["next.done"] = np.array([bool(episode["done"][i])])
                frame["next.terminated"] = np.array([bool(episode["terminated"][i])])
                frame["complementary_info.is_intervention"] = np.array([bool(episode["intervention"][i])])
                frame["task"] = task
                dataset.add_frame(frame)
            dataset.save_episode()
    finally:
        dataset.finalize()
    return len(episodes)


def returns_to_go(buffer: ReplayBuffer, gamma: float) -> torch.Tensor:
    """(capacity, N) discounted Monte-Carlo return from each transition to its episode's end
    (Cal-QL's reference value). Episodes still open at the newest transition are treated as
    ending there (a lower bound for non-negative rewards)."""
    order = torch.arange(buffer.steps) if not buffer.full else (torch.arange(buffer.capacity) + buffer.pos) % buffer.capacity
    returns = torch.zeros(buffer.capacity, buffer.num_envs, device=buffer.device)
    running = torch.zeros(buffer.num_envs, device=buffer.device)
    for slot in reversed(order.tolist()):
        running = buffer.reward[slot] + gamma * running * (~buffer.done[slot]).float()
        returns[slot] = running
    return returns
