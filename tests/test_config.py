"""Typed configs from YAML and dotted overrides, with errors that name the key."""

import dataclasses
from pathlib import Path

import pytest

import sims
from embodied.config import ConfigError, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Algo:
    lr: float = 3e-4
    epochs: int = 4
    clip: tuple[float, float] = (0.2, 0.28)
    schedule: str | None = None


@dataclasses.dataclass
class Run:
    env: sims.EnvConfig = dataclasses.field(default_factory=sims.EnvConfig)
    algo: Algo = dataclasses.field(default_factory=Algo)
    tags: list[str] = dataclasses.field(default_factory=list)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("env:\n  task: Reach\n  num_envs: 8\nalgo:\n  lr: 1.0e-3\n")
    cfg = load_config(Run, path, ["algo.lr=3e-4", "env.num_envs=256", "env.cameras=[wrist]", "algo.epochs=10"])
    assert cfg.env.task == "Reach" and cfg.env.num_envs == 256 and cfg.env.cameras == ("wrist",)
    assert cfg.algo.lr == 3e-4 and cfg.algo.epochs == 10
    assert cfg.env.randomization == sims.RandomizationConfig()


def test_round_trip_through_saved_yaml(tmp_path):
    cfg = load_config(Run, None, ["env.randomization.enabled=true", "algo.clip=[0.1, 0.3]", "tags=[a, b]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(Run, tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algo.lrr=1"], r"Unknown config key 'algo.lrr'. Did you mean 'lr'\?"),
        (["env.num_env=3"], r"Unknown config key 'env.num_env'. Did you mean 'num_envs'"),
        (["evn.task=Reach"], r"Unknown config key 'evn'. Did you mean 'env'"),
        (["algo.epochs=abc"], r"algo.epochs: expected an int; got 'abc'"),
        (["algo.epochs=2.5"], r"algo.epochs: expected an int"),
        (["algo.lr=fast"], r"algo.lr: expected a float"),
        (["env.randomization.enabled=maybe"], r"env.randomization.enabled: expected true or false"),
        (["algo.clip=[0.1]"], r"algo.clip: expected 2 items"),
        (["algo.lr"], r"must look like key.sub=value"),
        (["algo=3"], r"algo must be a mapping of Algo fields"),
    ],
)
def test_bad_keys_and_types_name_the_problem(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Run, None, overrides)


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Run, tmp_path / "nope.yaml")


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("lift_")))
def test_every_recipe_parses(recipe):
    """Each training recipe in configs/ loads into its config class: a renamed or mistyped key
    fails here, not minutes into someone's run (lift recipes: tests/test_lift.py)."""
    from embodied.distributed.config import DistributedTrainConfig
    from embodied.runner.trainer import TrainConfig

    path = ROOT / "configs" / recipe
    if "ray" in recipe:
        load_config(DistributedTrainConfig, path)
    else:
        load_config(TrainConfig, path)
