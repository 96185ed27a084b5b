"""Structured experiment configuration: composed by Hydra from ``conf/``, validated here.

Strategies have one typed config each (:class:`FedAvgConfig`, :class:`FedYogiConfig`, ...)
whose defaults and ranges come from the library's registry
(:data:`cifer_flwr.strategies.REGISTRY`); ``conf/strategy/*.yaml`` is rendered from them.
Every entry point
validates with :func:`check_experiment` before anything starts (before key generation,
before a federation is brought up): ``cifer run`` and the generic app through
:func:`compose` / :func:`validate`, ``cifer demo`` directly. A typo in a group option
(``strategy=fedyoga``), an override of a key the strategy does not take
(``strategy=fedyogi strategy.proximal_mu=0.1``) or a wrong value (``topology.graph=star``,
``strategy.eta=-1``) is one line naming the valid choices.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cifer_flwr.crypto import get_preset, is_paillier_preset
from cifer_flwr.exceptions import ConfigError, UnknownPresetError
from cifer_flwr.experiments.tasks import TASKS
from cifer_flwr.strategies.registry import REGISTRY, strategy_spec

__all__ = [
    "CONF_DIR",
    "STRATEGIES",
    "STRATEGY_CONFIGS",
    "ExperimentConfig",
    "FedAdagradConfig",
    "FedAdamConfig",
    "FedAvgConfig",
    "FedAvgMConfig",
    "FedProxConfig",
    "FedYogiConfig",
    "SecureFedConfig",
    "StrategyConfig",
    "check_experiment",
    "compose",
    "overrides_to_string",
    "strategy_config",
    "strategy_defaults",
    "strategy_name",
    "strategy_yaml",
    "validate",
    "write_strategy_yaml",
]

#: The config directory shipped inside the package (``conf/`` at the top level links here).
CONF_DIR = Path(__file__).resolve().parent / "conf"


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


class FederationKind(StrEnum):
    local = "local"
    simulation = "simulation"


class Partitioner(StrEnum):
    iid = "iid"
    dirichlet = "dirichlet"


# --------------------------------------------------------------------------- strategies
# One typed config per strategy (docs/design.md §3). The fields are declared here for typing
# and Hydra; their defaults, ranges and help lines come from the library's registry
# (:data:`cifer_flwr.strategies.registry.REGISTRY`), the one place they are written down.
# ``conf/strategy/NAME.yaml`` is rendered from these dataclasses (:func:`strategy_yaml`,
# ``python -m cifer_flwr.experiments.config``) and a test checks that every file equals its
# rendering; ``tests/test_strategy_registry.py`` checks that the fields are the registry's.


def _hp(strategy: str, name: str) -> Any:
    """The registry's hyperparameter ``name`` of ``strategy`` as a dataclass field."""
    h = REGISTRY[strategy].hyperparameter(name)
    return field(default=h.default, metadata={"check": h.check, "help": h.help})


@dataclass
class StrategyConfig:
    """Base of the typed per-strategy configs; ``name`` selects the strategy.

    Use a subclass (:class:`FedAvgConfig`, :class:`FedYogiConfig`, ...):
    :data:`STRATEGY_CONFIGS` maps every strategy name to its class, and
    :func:`strategy_config` builds one from a mapping, refusing keys the strategy does not
    take.
    """

    name: str = ""
    masking: bool = _hp("fedavg", "masking")

    @classmethod
    def hyperparameters(cls) -> tuple[str, ...]:
        """Names of the hyperparameters this strategy takes (its fields except ``name``)."""
        return tuple(f.name for f in fields(cls) if f.name != "name")


@dataclass
class FedAvgConfig(StrategyConfig):
    """FedAvg: no hyperparameters beyond sampling."""

    name: str = "fedavg"


@dataclass
class FedProxConfig(StrategyConfig):
    """FedProx: the proximal term's weight, sent to the clients."""

    name: str = "fedprox"
    proximal_mu: float = _hp("fedprox", "proximal_mu")


@dataclass
class FedAdagradConfig(StrategyConfig):
    """FedAdagrad (FedOpt family, docs/design.md §4.3.1)."""

    name: str = "fedadagrad"
    eta: float = _hp("fedadagrad", "eta")
    eta_l: float = _hp("fedadagrad", "eta_l")
    tau: float = _hp("fedadagrad", "tau")


@dataclass
class FedAdamConfig(StrategyConfig):
    """FedAdam (FedOpt family, docs/design.md §4.3.1)."""

    name: str = "fedadam"
    eta: float = _hp("fedadam", "eta")
    eta_l: float = _hp("fedadam", "eta_l")
    beta_1: float = _hp("fedadam", "beta_1")
    beta_2: float = _hp("fedadam", "beta_2")
    tau: float = _hp("fedadam", "tau")


@dataclass
class FedYogiConfig(StrategyConfig):
    """FedYogi (FedOpt family, docs/design.md §4.3.1)."""

    name: str = "fedyogi"
    eta: float = _hp("fedyogi", "eta")
    eta_l: float = _hp("fedyogi", "eta_l")
    beta_1: float = _hp("fedyogi", "beta_1")
    beta_2: float = _hp("fedyogi", "beta_2")
    tau: float = _hp("fedyogi", "tau")


@dataclass
class FedAvgMConfig(StrategyConfig):
    """FedAvgM: server momentum through the deferred key-holder step (docs/design.md §4.3.1)."""

    name: str = "fedavgm"
    server_learning_rate: float = _hp("fedavgm", "server_learning_rate")
    server_momentum: float = _hp("fedavgm", "server_momentum")


@dataclass
class SecureFedConfig(StrategyConfig):
    """SecureFed: cohort floor, clipping, distributed DP noise, aggregation check (§4.4)."""

    name: str = "securefed"
    min_cohort: int = _hp("securefed", "min_cohort")
    clip_norm: float | None = _hp("securefed", "clip_norm")
    noise_multiplier: float = _hp("securefed", "noise_multiplier")
    aggregation_check: bool = _hp("securefed", "aggregation_check")


#: Strategy name -> its typed config class, in the registry's order.
_CONFIG_CLASSES: Final[dict[str, type[StrategyConfig]]] = {
    cls.name: cls
    for cls in (
        FedAvgConfig,
        FedProxConfig,
        FedYogiConfig,
        FedAdamConfig,
        FedAdagradConfig,
        FedAvgMConfig,
        SecureFedConfig,
    )
}
STRATEGY_CONFIGS: Final[dict[str, type[StrategyConfig]]] = {
    name: _CONFIG_CLASSES[name] for name in REGISTRY
}
#: Strategy names accepted by every entry point (the registry's).
STRATEGIES: Final = tuple(STRATEGY_CONFIGS)


def strategy_name(value: object) -> str:
    """The strategy name ``value`` spells (case-insensitive), one of :data:`STRATEGIES`.

    Raises
    ------
    ConfigError
        For an unknown name, listing the valid ones (one line).

    """
    return strategy_spec(value).name


def _unknown_keys(name: str, keys: Iterable[str]) -> str:
    # ``masking`` belongs to every strategy: named apart from the strategy's own
    valid = [v for v in STRATEGY_CONFIGS[name].hyperparameters() if v != "masking"]
    takes = (", ".join(valid) if valid else "no hyperparameters") + " (and masking)"
    return (
        f"strategy.{', strategy.'.join(sorted(keys))}: not a hyperparameter of {name}, which "
        f"takes {takes}; remove the override or pick a strategy that takes it"
    )


def strategy_config(values: Mapping[str, Any] | DictConfig | None = None) -> StrategyConfig:
    """The typed config of the strategy ``values["name"]`` names (default ``fedavg``).

    Keys missing from ``values`` take the class defaults; values are converted to the
    declared types (``"0.5"`` -> ``0.5``). Ranges are not checked here (see
    :func:`check_experiment`).

    Raises
    ------
    ConfigError
        For an unknown name, a key the strategy does not take (naming the valid keys), or a
        value of the wrong type.

    """
    if isinstance(values, DictConfig):
        data = OmegaConf.to_container(values, resolve=True)
        assert isinstance(data, dict)
    else:
        data = dict(values or {})
    name = strategy_name(data.pop("name", "fedavg") or "fedavg")
    cls = STRATEGY_CONFIGS[name]
    unknown = set(data) - set(cls.hyperparameters())
    if unknown:
        raise ConfigError(_unknown_keys(name, unknown) + ".")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), data)
        built = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        msg = str(exc).splitlines()[0]
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"invalid value for strategy.{key or name}: {msg}") from None
    assert isinstance(built, cls)
    return built


def strategy_defaults(name: str) -> StrategyConfig:
    """The default hyperparameters of strategy ``name`` (those of ``conf/strategy/NAME.yaml``).

    The examples' run config falls back to them for keys it does not set; ``cifer run``
    composes the YAML rendered from the same defaults.

    Raises
    ------
    ConfigError
        For an unknown name, listing the valid ones.

    """
    return STRATEGY_CONFIGS[strategy_name(name)]()


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def strategy_yaml(name: str) -> str:
    """The text of ``conf/strategy/NAME.yaml``, rendered from the dataclass defaults."""
    cls = STRATEGY_CONFIGS[strategy_name(name)]
    lines = [
        f"# {cls.__name__} defaults, from the library's registry (rendered by",
        "# `python -m cifer_flwr.experiments.config`; edit cifer_flwr/strategies/registry.py,",
        "# not this file)",
        f"name: {cls.name}",
    ]
    for f in fields(cls):
        if f.name != "name":
            entry = f"{f.name}: {_yaml_value(f.default)}"
            lines.append(f"{entry:<28}# {f.metadata['help']}; {f.metadata['check']}")
    return "\n".join(lines) + "\n"


def write_strategy_yaml(directory: Path | None = None) -> list[Path]:
    """(Re)write ``conf/strategy/*.yaml`` from the dataclass defaults; returns the files."""
    target = (directory or CONF_DIR) / "strategy"
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in STRATEGIES:
        path = target / f"{name}.yaml"
        path.write_text(strategy_yaml(name))
        written.append(path)
    return written


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
    """Task (see :data:`~cifer_flwr.experiments.tasks.TASKS`), dataset and local training."""

    name: str = "digits-torch"
    dataset: str = "digits"
    epochs: int = 1
    learning_rate: float = 0.1
    batch_size: int = 32
    #: your own data / model (absolute paths, "" = the task's): .npz/.npy/.csv(/.tfrecord)
    #: partitioned across nodes; .h5/.keras, .pt (+ model_class) or .npz (experiments/tasks)
    dataset_path: str = ""
    model_path: str = ""
    #: package.module:Class of the PyTorch module whose state dict model_path holds
    model_class: str = ""


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

    #: one of the typed per-strategy configs (:data:`STRATEGY_CONFIGS`)
    strategy: StrategyConfig = field(default_factory=FedAvgConfig)
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


def check_experiment(exp: ExperimentConfig) -> ExperimentConfig:
    """The one validation of an experiment's options, before anything starts.

    Checks the strategy name and hyperparameter ranges
    (:func:`~cifer_flwr.experiments.strategy_builder.hyperparameter_problems`, the check the
    strategy builder applies too), SecureFed's need for encryption, rounds, fractions,
    nodes, task, partitioning, topology, federation kind, preset and resume. ``cifer run``
    and the generic app reach it through :func:`validate`, ``cifer demo`` calls it on the
    config it runs; nothing (key generation, a federation) starts before it passed.

    Returns
    -------
    ExperimentConfig
        ``exp`` itself.

    Raises
    ------
    ConfigError
        Listing every problem found, each with the value found and the valid ones.

    """
    # lazy: strategy_builder imports this module
    from cifer_flwr.experiments.strategy_builder import hyperparameter_problems, plaintext_problem

    problems = []
    if not isinstance(exp.strategy, tuple(STRATEGY_CONFIGS.values())):
        raise ConfigError(
            f"strategy config {type(exp.strategy).__name__} is not one of "
            f"{', '.join(c.__name__ for c in STRATEGY_CONFIGS.values())}; build it with "
            "strategy_config({'name': NAME, ...})."
        )
    if exp.num_rounds < 1:
        problems.append(f"num_rounds must be >= 1, got {exp.num_rounds}")
    problems += hyperparameter_problems(
        exp.strategy, fraction_train=exp.fraction_train, fraction_evaluate=exp.fraction_evaluate
    )
    if not exp.encryption.enabled and plaintext_problem(exp.strategy.name):
        problems.append(plaintext_problem(exp.strategy.name))
    if exp.strategy.masking and (not exp.encryption.enabled or exp.encryption.preset != "packed"):
        problems.append(
            "strategy.masking=true needs the exact sums of preset packed: add "
            "encryption.preset=packed (masking cannot run on CKKS, Paillier or plaintext)"
        )
    nodes = exp.federation.nodes
    if nodes < 2:
        problems.append(f"federation.nodes must be >= 2, got {nodes}")
    fed = exp.federation
    if fed.kind == FederationKind.simulation:
        wrong = [f"federation.{k}" for k, on in (("tls", fed.tls), ("auth", fed.auth)) if on]
        if wrong:
            problems.append(
                f"federation=simulation got {' and '.join(w + '=true' for w in wrong)}, but "
                "Flower's simulation engine runs its virtual SuperNodes inside the "
                "SuperLink's process tree (no connection to encrypt, no node to "
                f"authenticate); set {' '.join(w + '=false' for w in wrong)}, or use "
                "federation=local for TLS and node authentication"
            )
    if exp.federation.timeout <= 0:
        problems.append(f"federation.timeout must be > 0 seconds, got {exp.federation.timeout}")
    if exp.task.name not in TASKS:
        problems.append(f"task.name {exp.task.name!r} is not one of {', '.join(sorted(TASKS))}")
    task = exp.task
    for label, count in (("task.epochs", task.epochs), ("task.batch_size", task.batch_size)):
        if count < 1:
            problems.append(f"{label} must be >= 1, got {count}")
    if not exp.task.learning_rate > 0:
        problems.append(f"task.learning_rate must be > 0, got {exp.task.learning_rate}")
    if exp.partitioning.alpha <= 0:
        problems.append(f"partitioning.alpha must be > 0, got {exp.partitioning.alpha}")
    topo = exp.topology
    if topo.name == TopologyName.p2p and exp.strategy.name != FedAvgConfig.name:
        problems.append(
            f"topology=p2p mixes the peers' models by gossip and takes no server strategy, "
            f"got strategy={exp.strategy.name}; drop the strategy override or use "
            "topology=centralized"
        )
    kregular = topo.name == TopologyName.p2p and topo.graph == Graph.kregular
    if kregular and (topo.degree < 2 or topo.degree % 2 or topo.degree >= nodes):
        problems.append(
            f"topology.degree must be even, >= 2 and < federation.nodes ({nodes}) for a "
            f"k-regular graph, got {topo.degree}"
        )
    if isinstance(exp.strategy, SecureFedConfig) and exp.strategy.min_cohort > nodes:
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
    if is_paillier_preset(exp.encryption.preset):  # docs/design.md §4.8
        if exp.encryption.enabled and isinstance(exp.strategy, SecureFedConfig):
            problems.append(
                "strategy=securefed needs a CKKS or packed key (its integrity values use "
                "reserved ciphertext slots, which Paillier does not have); use "
                "encryption.preset=default or packed, or another strategy with Paillier"
            )
    else:
        try:
            get_preset(exp.encryption.preset)
        except UnknownPresetError as exc:
            problems.append(f"encryption.preset: {exc}")
    if problems:
        raise ConfigError("invalid experiment config: " + "; ".join(problems) + ".")
    return exp


def validate(cfg: DictConfig | Mapping[str, Any]) -> ExperimentConfig:
    """Check a composed config against the schema and :func:`check_experiment`.

    The strategy section is typed by its name (:func:`strategy_config`), the rest by
    :class:`ExperimentConfig`.

    Raises
    ------
    ConfigError
        Naming the key, the value found and the valid values.

    """
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    data = OmegaConf.to_container(node, resolve=False)
    assert isinstance(data, dict)
    raw_strategy = data.pop("strategy", None)
    strategy = strategy_config(raw_strategy if isinstance(raw_strategy, dict) else None)
    schema = OmegaConf.structured(ExperimentConfig)
    try:
        merged = OmegaConf.merge(schema, data)
        exp = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        msg = str(exc).splitlines()[0]
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"invalid value for {key or 'config'}: {msg}") from None
    assert isinstance(exp, ExperimentConfig)
    exp.strategy = strategy
    return check_experiment(exp)


def _override_key_value(item: str) -> tuple[str, str]:
    key, _, value = item.lstrip("+~").partition("=")
    return key.strip(), value.strip()


def _check_strategy_overrides(items: list[str]) -> None:
    """Refuse a strategy override Hydra would report in several lines, in one line."""
    name = FedAvgConfig.name
    for item in items:
        key, value = _override_key_value(item)
        if key in ("strategy", "strategy.name") and "," not in value:
            name = strategy_name(value)
    unknown = {
        key.split(".", 1)[1]
        for key, _ in map(_override_key_value, items)
        if key.startswith("strategy.") and key != "strategy.name"
    } - set(STRATEGY_CONFIGS[name].hyperparameters())
    if unknown:
        raise ConfigError(_unknown_keys(name, unknown) + ".")


_MISSING_OPTION = re.compile(r"Could not find '([^'/]+)/([^']+)'")


def _hydra_problem(message: str) -> str:
    """Hydra's composition error as one line (an unknown group option lists the options)."""
    missing = _MISSING_OPTION.search(message)
    if missing:
        group, option = missing.groups()
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        return f"{group}={option!r} is unknown; choose one of {', '.join(options)}."
    text = message.split("\nConfig search path:")[0].strip()
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def compose(overrides: list[str] | str = ()) -> ExperimentConfig:  # type: ignore[assignment]
    """Compose ``conf/config.yaml`` with Hydra overrides and validate it.

    ``overrides`` is a list (``["strategy=fedyogi", "num_rounds=3"]``) or one string
    (``"strategy=fedyogi num_rounds=3"``), the form Flower's run config can carry.

    Raises
    ------
    ConfigError
        One line: an unknown group option or strategy key (listing the valid ones), or
        what :func:`validate` reports.

    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    items = overrides.split() if isinstance(overrides, str) else list(overrides)
    _check_strategy_overrides(items)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=items)
    except HydraException as exc:
        raise ConfigError(_hydra_problem(str(exc))) from None
    return validate(cfg)


def overrides_to_string(exp: ExperimentConfig) -> str:
    """Serialize a full config as one Hydra override string (for Flower's run config).

    The strategy comes first as its group option (``strategy=fedyogi``), then every key
    as ``++key=value``; :func:`compose` of the string gives back ``exp``.
    """
    flat: list[str] = [f"strategy={exp.strategy.name}"]

    def walk(prefix: str, node: Any) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(path + ".", value)
            elif path != "strategy.name":
                flat.append(f"++{path}={'null' if value is None else value}")

    walk("", OmegaConf.to_container(OmegaConf.structured(exp), enum_to_str=True))
    return " ".join(flat)


if __name__ == "__main__":  # pragma: no cover - regenerates conf/strategy/*.yaml
    for written in write_strategy_yaml():
        sys.stdout.write(f"wrote {written}\n")
