"""Structured experiment configuration: composed by Hydra from ``conf/``, validated here.

A typo in a group option (``strategy=fedyoga``) is reported by Hydra with the available
options; a wrong value (``topology.graph=star``) is reported here with the valid values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cifer_flwr.crypto import get_preset
from cifer_flwr.exceptions import ConfigError, UnknownPresetError
from cifer_flwr.experiments.tasks import TASKS

__all__ = [
    "CONF_DIR",
    "ExperimentConfig",
    "compose",
    "overrides_to_string",
    "strategy_defaults",
    "validate",
]

#: The config directory shipped inside the package (``conf/`` at the top level links here).
CONF_DIR = Path(__file__).resolve().parent / "conf"


class StrategyName(StrEnum):
    fedavg = "fedavg"
    fedprox = "fedprox"
    fedyogi = "fedyogi"
    fedadam = "fedadam"
    fedadagrad = "fedadagrad"
    securefed = "securefed"


class TopologyName(StrEnum):
    centralized = "centralized"
    p2p = "p2p"


class Graph(StrEnum):
    ring = "ring"
    kregular = "kregular"
    complete = "complete"


class Mixing(StrEnum):
    metropolis = "metropolis"
    uniform = "uniform"


class ModelFamily(StrEnum):
    torch = "torch"
    tensorflow = "tensorflow"
    sklearn = "sklearn"


class FederationKind(StrEnum):
    local = "local"
    simulation = "simulation"


class Partitioner(StrEnum):
    iid = "iid"
    dirichlet = "dirichlet"


@dataclass
class StrategyConfig:
    """Strategy and its parameters (unused ones keep their defaults)."""

    name: StrategyName = StrategyName.fedavg
    proximal_mu: float = 0.0
    eta: float = 0.1
    eta_l: float = 0.1
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3
    min_cohort: int = 3
    clip_norm: float | None = None
    noise_multiplier: float = 0.0
    aggregation_check: bool = True


@dataclass
class TopologyConfig:
    """Centralized (a server aggregates) or peer-to-peer (gossip over a graph)."""

    name: TopologyName = TopologyName.centralized
    graph: Graph = Graph.ring
    degree: int = 2
    mixing: Mixing = Mixing.metropolis


@dataclass
class EncryptionConfig:
    """CKKS on or off (``none`` is the plaintext baseline)."""

    enabled: bool = True
    preset: str = "default"


@dataclass
class TaskConfig:
    """Model family, dataset and local training settings."""

    name: str = "digits-torch"
    model: ModelFamily = ModelFamily.torch
    dataset: str = "digits"
    epochs: int = 1
    learning_rate: float = 0.1
    batch_size: int = 32


@dataclass
class FederationConfig:
    """Where the experiment runs."""

    kind: FederationKind = FederationKind.local
    nodes: int = 3
    tls: bool = True
    auth: bool = False
    timeout: float = 900.0


@dataclass
class PartitioningConfig:
    """How the dataset is split among clients."""

    partitioner: Partitioner = Partitioner.iid
    alpha: float = 0.5


@dataclass
class ExperimentConfig:
    """A whole experiment, as composed from ``conf/config.yaml``."""

    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    partitioning: PartitioningConfig = field(default_factory=PartitioningConfig)
    num_rounds: int = 3
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    seed: int = 0
    #: continue a killed run from its checkpoint (centralized, encrypted runs only)
    resume: bool = False


def _check(exp: ExperimentConfig) -> None:
    problems = []
    if exp.num_rounds < 1:
        problems.append(f"num_rounds must be >= 1, got {exp.num_rounds}")
    # strategy hyperparameters and fractions: the one check the strategy builder applies
    from cifer_flwr.experiments.strategy_builder import hyperparameter_problems, plaintext_problem

    problems += hyperparameter_problems(
        exp.strategy, fraction_train=exp.fraction_train, fraction_evaluate=exp.fraction_evaluate
    )
    if not exp.encryption.enabled and plaintext_problem(exp.strategy.name):
        problems.append(plaintext_problem(exp.strategy.name))
    nodes = exp.federation.nodes
    if nodes < 2:
        problems.append(f"federation.nodes must be >= 2, got {nodes}")
    if exp.task.name not in TASKS:
        problems.append(f"task.name {exp.task.name!r} is not one of {sorted(TASKS)}")
    if exp.partitioning.alpha <= 0:
        problems.append(f"partitioning.alpha must be > 0, got {exp.partitioning.alpha}")
    topo = exp.topology
    kregular = topo.name == TopologyName.p2p and topo.graph == Graph.kregular
    if kregular and (topo.degree < 2 or topo.degree % 2 or topo.degree >= nodes):
        problems.append(
            f"topology.degree must be even, >= 2 and < federation.nodes ({nodes}) for a "
            f"k-regular graph, got {topo.degree}"
        )
    if exp.strategy.name == StrategyName.securefed and exp.strategy.min_cohort > nodes:
        problems.append(
            f"strategy.min_cohort ({exp.strategy.min_cohort}) exceeds federation.nodes ({nodes})"
        )
    if exp.resume and not exp.encryption.enabled:
        problems.append(
            "resume=true needs encryption (the plaintext baseline keeps no checkpoint; "
            "rerun it without resume)"
        )
    if exp.resume and topo.name == TopologyName.p2p:
        problems.append(
            "resume=true needs topology=centralized (p2p peers keep their models in the "
            "ClientApps, there is no server checkpoint)"
        )
    try:
        get_preset(exp.encryption.preset)
    except UnknownPresetError as exc:
        problems.append(f"encryption.preset: {exc}")
    if problems:
        raise ConfigError("invalid experiment config: " + "; ".join(problems) + ".")


def validate(cfg: DictConfig | dict[str, Any]) -> ExperimentConfig:
    """Check a composed config against the schema and return it as dataclasses.

    Raises
    ------
    ConfigError
        Naming the key, the value found and the valid values.

    """
    schema = OmegaConf.structured(ExperimentConfig)
    try:
        merged = OmegaConf.merge(schema, cfg)
        exp = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        msg = str(exc).splitlines()[0]
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"invalid value for {key or 'config'}: {msg}") from None
    assert isinstance(exp, ExperimentConfig)
    _check(exp)
    return exp


def compose(overrides: list[str] | str = ()) -> ExperimentConfig:  # type: ignore[assignment]
    """Compose ``conf/config.yaml`` with Hydra overrides and validate it.

    ``overrides`` is a list (``["strategy=fedyogi", "num_rounds=3"]``) or one string
    (``"strategy=fedyogi num_rounds=3"``), the form Flower's run config can carry.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    items = overrides.split() if isinstance(overrides, str) else list(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=items)
    except HydraException as exc:
        raise ConfigError(str(exc).split("\nConfig search path:")[0].strip()) from None
    return validate(cfg)


def strategy_defaults(name: str) -> StrategyConfig:
    """The hyperparameters of strategy ``name`` as ``conf/strategy/NAME.yaml`` sets them.

    The Hydra group files are the one place strategy defaults are written down; the
    examples' run config falls back to them for keys it does not set.

    Raises
    ------
    ConfigError
        When there is no such strategy file.

    """
    path = CONF_DIR / "strategy" / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"strategy={name!r} is unknown; choose one of {', '.join(options)}.")
    merged = OmegaConf.merge(OmegaConf.structured(StrategyConfig), OmegaConf.load(path))
    defaults = OmegaConf.to_object(merged)
    assert isinstance(defaults, StrategyConfig)
    return defaults


def overrides_to_string(exp: ExperimentConfig) -> str:
    """Serialize a full config as one Hydra override string (for Flower's run config)."""
    flat: list[str] = []

    def walk(prefix: str, node: Any) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(path + ".", value)
            else:
                flat.append(f"++{path}={'null' if value is None else value}")

    walk("", OmegaConf.to_container(OmegaConf.structured(exp), enum_to_str=True))
    return " ".join(flat)
