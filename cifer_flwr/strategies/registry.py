"""The one registry of strategies: name, classes, hyperparameters with defaults and ranges.

Every face that names a strategy derives from :data:`REGISTRY` (docs/design.md §3): the
Hydra dataclasses of ``cifer run`` (``cifer_flwr.experiments.config``) and the YAML under
``conf/strategy/`` rendered from them, the examples' run-config keys
(:data:`RUN_CONFIG_KEYS`), the FedLearn specifications (``cifer_flwr.fedlearn.strategy``)
and the strategy builder. A default is written here once; it is the default of the
encrypted class's constructor, which is the default of Flower's class of the same name
(``tests/test_strategy_registry.py`` checks that the faces agree).

Only hyperparameters are listed (what changes the algorithm); Flower's sampling arguments
(``fraction_train``, ``min_train_nodes``, ...) pass through the constructors unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from flwr.serverapp import strategy as flwr_strategy
from flwr.serverapp.strategy import Strategy

from cifer_flwr.exceptions import ConfigError
from cifer_flwr.strategies.fedadagrad import FedAdagrad
from cifer_flwr.strategies.fedadam import FedAdam
from cifer_flwr.strategies.fedavg import FedAvg
from cifer_flwr.strategies.fedavgm import FedAvgM
from cifer_flwr.strategies.fedprox import FedProx
from cifer_flwr.strategies.fedyogi import FedYogi
from cifer_flwr.strategies.securefed import SecureFed

__all__ = [
    "COHORT",
    "FLAG",
    "NON_NEGATIVE",
    "POSITIVE",
    "POSITIVE_OR_NONE",
    "REGISTRY",
    "RUN_CONFIG_KEYS",
    "STRATEGY_NAMES",
    "UNIT",
    "Hyperparameter",
    "StrategySpec",
    "hyperparameter_problems",
    "range_problem",
    "strategy_spec",
]

#: Range kinds (:attr:`Hyperparameter.check`), what :func:`range_problem` accepts.
POSITIVE: Final = "> 0"
UNIT: Final = "in [0, 1)"
NON_NEGATIVE: Final = ">= 0"
COHORT: Final = ">= 2"
POSITIVE_OR_NONE: Final = "> 0 or null"
FLAG: Final = "true or false"


@dataclass(frozen=True)
class Hyperparameter:
    """One constructor keyword of a strategy that changes the algorithm.

    Attributes
    ----------
    name : str
        The constructor keyword (and Hydra's ``strategy.<name>``).
    default : float, int, bool or None
        The constructor's default.
    check : str
        Range kind (:data:`POSITIVE`, :data:`UNIT`, ...), checked by :func:`range_problem`.
    help : str
        One line for the YAML comment and the docs.
    run_config_key : str
        The key of Flower run config (``pyproject.toml [tool.flwr.app.config]``).

    """

    name: str
    default: float | int | bool | None
    check: str
    help: str
    run_config_key: str


@dataclass(frozen=True)
class StrategySpec:
    """A strategy: its name, our encrypted class, Flower's plaintext class, hyperparameters.

    ``plaintext`` is ``None`` for SecureFed (it has no plaintext counterpart).
    """

    name: str
    encrypted: type[Strategy]
    plaintext: type[Strategy] | None
    hyperparameters: tuple[Hyperparameter, ...]

    def defaults(self) -> dict[str, Any]:
        """Hyperparameter name -> default."""
        return {h.name: h.default for h in self.hyperparameters}

    def hyperparameter(self, name: str) -> Hyperparameter:
        """The hyperparameter ``name`` (``KeyError`` when the strategy does not take it)."""
        for h in self.hyperparameters:
            if h.name == name:
                return h
        raise KeyError(name)


_MASKING = Hyperparameter(
    "masking",
    False,
    FLAG,
    "secure aggregation: pairwise masks inside the sums (preset packed, §4.9)",
    "masking",
)
_ETA_L = "client learning rate (reported, as in Flower)"


def _fedopt(eta: float, eta_l: float, *, betas: bool) -> tuple[Hyperparameter, ...]:
    out = [
        Hyperparameter("eta", eta, POSITIVE, "server learning rate", "server-lr"),
        Hyperparameter("eta_l", eta_l, POSITIVE, _ETA_L, "eta-l"),
    ]
    if betas:
        out += [
            Hyperparameter("beta_1", 0.9, UNIT, "momentum", "beta-1"),
            Hyperparameter("beta_2", 0.99, UNIT, "second-moment decay", "beta-2"),
        ]
    out.append(Hyperparameter("tau", 0.001, POSITIVE, "adaptivity (Flower's tau)", "tau"))
    return (_MASKING, *out)


#: Strategy name -> its specification (the order is the order names are listed in).
REGISTRY: Final[Mapping[str, StrategySpec]] = {
    spec.name: spec
    for spec in (
        StrategySpec("fedavg", FedAvg, flwr_strategy.FedAvg, (_MASKING,)),
        StrategySpec(
            "fedprox",
            FedProx,
            flwr_strategy.FedProx,
            (
                _MASKING,
                Hyperparameter(
                    "proximal_mu",
                    0.0,
                    NON_NEGATIVE,
                    "weight of the proximal term (0: FedAvg)",
                    "proximal-mu",
                ),
            ),
        ),
        StrategySpec("fedyogi", FedYogi, flwr_strategy.FedYogi, _fedopt(0.01, 0.0316, betas=True)),
        StrategySpec("fedadam", FedAdam, flwr_strategy.FedAdam, _fedopt(0.1, 0.1, betas=True)),
        StrategySpec(
            "fedadagrad", FedAdagrad, flwr_strategy.FedAdagrad, _fedopt(0.1, 0.1, betas=False)
        ),
        StrategySpec(
            "fedavgm",
            FedAvgM,
            flwr_strategy.FedAvgM,
            (
                _MASKING,
                Hyperparameter(
                    "server_learning_rate",
                    1.0,
                    POSITIVE,
                    "server learning rate",
                    "server-learning-rate",
                ),
                Hyperparameter(
                    "server_momentum", 0.0, UNIT, "server momentum (0: FedAvg)", "server-momentum"
                ),
            ),
        ),
        StrategySpec(
            "securefed",
            SecureFed,
            None,
            (
                _MASKING,
                Hyperparameter(
                    "min_cohort",
                    3,
                    COHORT,
                    "minimum cohort: fewer updates are never aggregated",
                    "min-cohort",
                ),
                Hyperparameter(
                    "clip_norm",
                    None,
                    POSITIVE_OR_NONE,
                    "L2 bound per client update (null: no clipping)",
                    "clip-norm",
                ),
                Hyperparameter(
                    "noise_multiplier",
                    0.0,
                    NON_NEGATIVE,
                    "distributed DP noise (needs clip_norm)",
                    "noise-multiplier",
                ),
                Hyperparameter(
                    "aggregation_check",
                    True,
                    FLAG,
                    "the key holders check the aggregate",
                    "aggregation-check",
                ),
            ),
        ),
    )
}

#: Strategy names accepted by every entry point.
STRATEGY_NAMES: Final = tuple(REGISTRY)

#: Hyperparameter -> run config key (the same key for a name every strategy shares).
#: Run config has no ``None``: ``clip-norm = 0.0`` means no clipping.
RUN_CONFIG_KEYS: Final[Mapping[str, str]] = {
    h.name: h.run_config_key for spec in REGISTRY.values() for h in spec.hyperparameters
}


def strategy_spec(name: object) -> StrategySpec:
    """The specification of strategy ``name`` (case-insensitive).

    Raises
    ------
    ConfigError
        For an unknown name, listing the valid ones (one line).

    """
    key = str(name).strip().lower()
    if key not in REGISTRY:
        raise ConfigError(
            f"strategy={key!r} is unknown; choose one of {', '.join(STRATEGY_NAMES)}."
        )
    return REGISTRY[key]


def range_problem(check: str, value: Any) -> bool:
    """Whether ``value`` lies outside the range kind ``check``."""
    if check == FLAG:
        return not isinstance(value, bool)
    if check == POSITIVE_OR_NONE and value is None:
        return False
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        return True
    if check in (POSITIVE, POSITIVE_OR_NONE):
        return not (value > 0 and math.isfinite(value))
    if check == UNIT:
        return not 0.0 <= value < 1.0
    if check == NON_NEGATIVE:
        return not (value >= 0 and math.isfinite(value))
    if check == COHORT:
        return value < 2 or value != int(value)
    raise ConfigError(f"unknown range kind {check!r} (a bug in the strategy registry).")


def _label(name: str) -> str:
    key = RUN_CONFIG_KEYS.get(name)
    return f"strategy.{name}" + (f" (run config '{key}')" if key else "")


def hyperparameter_problems(name: str, values: Mapping[str, Any]) -> list[str]:
    """What is wrong with ``values`` for strategy ``name`` (empty when they are valid).

    Every value is checked against its range; keys the strategy does not take are not
    checked here (the faces refuse them with their own wording). ``noise_multiplier > 0``
    needs ``clip_norm`` (the noise is scaled to the clipping bound).

    Raises
    ------
    ConfigError
        For an unknown strategy name.

    """
    spec = strategy_spec(name)
    problems = []
    for h in spec.hyperparameters:
        if h.name in values and range_problem(h.check, values[h.name]):
            problems.append(f"{_label(h.name)} must be {h.check}, got {values[h.name]}")
    noise = values.get("noise_multiplier", 0.0)
    positive = isinstance(noise, int | float) and not isinstance(noise, bool) and noise > 0
    if spec.name == "securefed" and positive and values.get("clip_norm") is None:
        problems.append(
            f"{_label('noise_multiplier')}={noise} needs {_label('clip_norm')} "
            "(the noise is scaled to the clipping bound)"
        )
    return problems
