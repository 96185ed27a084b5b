"""Flower run config -> an encrypted strategy or its plaintext baseline, and the client mod.

* :func:`make_strategy` reads run config (``strategy``, ``encryption``, ``public-key``, the
  hyperparameters' keys of :data:`cifer_flwr.strategies.registry.RUN_CONFIG_KEYS`, ...) and
  builds the strategy with :func:`build_strategy`: one of :mod:`cifer_flwr.strategies`, or
  Flower's own class of the same name when ``encryption = false`` (the plaintext baseline).
* :func:`build_strategy` is the one strategy builder of every entry point: the examples
  (through :func:`make_strategy`), the generic app behind ``cifer run`` and the FedLearn API
  (through the harness's typed configs, :mod:`cifer_flwr.experiments.strategy_builder`), so
  a configuration means the same strategy whichever entry point reads it.
* :data:`encryption_mod` is :func:`cifer_flwr.mods.ckks_mod` switched by run config
  ``encryption`` (:func:`switched_ckks_mod`, also the generic app's client mod).

Only key *paths* ever appear in run config; the ServerApp loads a public key only.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from flwr.app import Context, Message
from flwr.serverapp.strategy import Strategy

from cifer_flwr.exceptions import ConfigError
from cifer_flwr.flower_types import ClientAppCallable, Mod
from cifer_flwr.mods import ckks_mod
from cifer_flwr.strategies import registry
from cifer_flwr.strategies.registry import (
    FLAG,
    POSITIVE_OR_NONE,
    REGISTRY,
    RUN_CONFIG_KEYS,
    Hyperparameter,
    strategy_spec,
)

__all__ = [
    "BASELINE",
    "CHECKPOINT_SUFFIX",
    "ENCRYPTED_STRATEGIES",
    "PLAINTEXT_STRATEGIES",
    "RC_CHECKPOINT",
    "RC_RESUME",
    "baseline_name",
    "build_strategy",
    "checkpoint_options",
    "checkpoint_path",
    "configuration_problems",
    "encryption_enabled",
    "encryption_mod",
    "make_strategy",
    "path_option",
    "plaintext_problem",
    "resume_requested",
    "switched_ckks_mod",
]

#: Run config keys: continue from the checkpoint / where the strategy checkpoints.
RC_RESUME = "resume"
RC_CHECKPOINT = "checkpoint-path"
#: Suffix of the checkpoint derived from the results (or save) path.
CHECKPOINT_SUFFIX = ".ckpt"
#: Message-type suffix of peer-to-peer messages (``train.p2p``), passed through unencrypted.
P2P_SUFFIX = ".p2p"
#: The plaintext baseline of a strategy without one (SecureFed): FedAvg.
BASELINE: Final = "fedavg"

#: Strategy name -> our encrypted class / Flower's plaintext class of the same name (from
#: the registry). SecureFed has no plaintext counterpart: it is refused without encryption.
ENCRYPTED_STRATEGIES: Final[dict[str, type[Strategy]]] = {
    name: spec.encrypted for name, spec in REGISTRY.items()
}
PLAINTEXT_STRATEGIES: Final[dict[str, type[Strategy]]] = {
    name: spec.plaintext for name, spec in REGISTRY.items() if spec.plaintext is not None
}


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


def encryption_enabled(run_config: Mapping[str, Any]) -> bool:
    """Whether run config asks for encryption (``encryption``, default true)."""
    value = run_config.get("encryption", True)
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no", "off")
    return bool(value)


def path_option(run_config: Mapping[str, Any], key: str) -> Path | None:
    """The absolute path run config ``key`` holds (``None`` when empty).

    Raises
    ------
    ConfigError
        For a relative path (the ServerApp runs in a SuperLink subprocess).

    """
    value = str(run_config.get(key, "") or "")
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise ConfigError(
            f"run config '{key}' must be an absolute path (the ServerApp runs in a "
            f"SuperLink subprocess with its own working directory); got {value!r}."
        )
    return path


def resume_requested(run_config: Mapping[str, Any]) -> bool:
    """Whether run config asks to continue from a checkpoint (``resume``, default false)."""
    return _flag(run_config.get(RC_RESUME, False))


def checkpoint_path(run_config: Mapping[str, Any]) -> Path | None:
    """Where the strategy checkpoints after every round, from run config.

    ``checkpoint-path`` when given (absolute); else next to the results file
    (``results-path`` with suffix :data:`CHECKPOINT_SUFFIX`: ``run.json`` ->
    ``run.ckpt``); else next to ``save-path``; else ``None`` (no checkpoint).

    Raises
    ------
    ConfigError
        For a relative path.

    """
    explicit = path_option(run_config, RC_CHECKPOINT)
    if explicit is not None:
        return explicit
    for key in ("results-path", "save-path"):
        base = path_option(run_config, key)
        if base is not None:
            return base.with_suffix(CHECKPOINT_SUFFIX)
    return None


def baseline_name(name: str) -> str:
    """The strategy of the plaintext baseline that a run of ``name`` is compared with.

    The same name, except SecureFed: its baseline is FedAvg without the hardening (asked
    for explicitly; SecureFed itself without encryption is a :class:`ConfigError`).
    """
    value = strategy_spec(name).name
    return value if value in PLAINTEXT_STRATEGIES else BASELINE


def plaintext_problem(name: str) -> str:
    """Why ``name`` cannot run without encryption (empty when it can).

    :func:`cifer_flwr.experiments.config.validate` reports it for a composed config before
    anything starts; :func:`build_strategy` refuses the same combination.
    """
    value = strategy_spec(name).name
    if value in PLAINTEXT_STRATEGIES:
        return ""
    return (
        f"strategy={value} is an encrypted strategy and has no plaintext baseline; turn "
        "encryption on (encryption=ckks / run config encryption=true) or pick "
        f"{baseline_name(value)} for the plaintext baseline"
    )


def configuration_problems(
    name: str,
    hyperparameters: Mapping[str, Any],
    *,
    fraction_train: float = 1.0,
    fraction_evaluate: float = 1.0,
    min_nodes: tuple[int, ...] = (),
) -> list[str]:
    """What is wrong with a strategy's configuration (empty when it is valid).

    Every hyperparameter is checked against its range in the library's registry
    (:func:`cifer_flwr.strategies.registry.hyperparameter_problems`: ``eta``, ``eta_l``,
    ``tau``, ``server_learning_rate > 0``; ``beta_1``, ``beta_2``, ``server_momentum`` in
    ``[0, 1)``; ``proximal_mu``, ``noise_multiplier >= 0``; ``min_cohort >= 2``;
    ``clip_norm > 0`` or ``None``); ``noise_multiplier > 0`` needs ``clip_norm``; fractions
    must lie in ``(0, 1]`` and node counts be ``>= 1``.

    Raises
    ------
    ConfigError
        For an unknown strategy name.

    """
    problems: list[str] = []
    for label, value in (
        ("fraction_train", fraction_train),
        ("fraction_evaluate", fraction_evaluate),
    ):
        if not 0.0 < value <= 1.0:
            problems.append(f"{label} must be in (0, 1], got {value}")
    for count in min_nodes:
        if count < 1:
            problems.append(f"node counts must be >= 1, got {count}")
    problems += registry.hyperparameter_problems(name, hyperparameters)
    return problems


def checkpoint_options(
    strategy_class: type, path: Path | None, resume: bool, *, encrypted: bool
) -> dict[str, Any]:
    """Constructor keywords ``checkpoint_path`` / ``resume`` for ``strategy_class``.

    Raises
    ------
    ConfigError
        When ``resume`` is asked for a plaintext strategy (Flower's strategies keep no
        checkpoint: the plaintext baseline is rerun from round 1), or without a path.

    """
    if not encrypted:
        if resume:
            raise ConfigError(
                "resume=true needs an encrypted strategy: the plaintext baseline "
                "(encryption=none / encryption=false) keeps no checkpoint; rerun it from "
                "round 1 without resume."
            )
        return {}
    if resume and path is None:
        raise ConfigError(
            "resume=true but no checkpoint path: set run config 'results-path' (the "
            "checkpoint lives next to it) or 'checkpoint-path' to an absolute path."
        )
    params = inspect.signature(strategy_class).parameters
    if "checkpoint_path" not in params:  # a strategy without checkpoints (none today)
        if resume:
            raise ConfigError(
                f"{strategy_class.__name__} cannot resume (no checkpoint_path argument); "
                "rerun without resume."
            )
        return {}
    return {"checkpoint_path": path, "resume": resume}


def build_strategy(
    name: str,
    hyperparameters: Mapping[str, Any],
    *,
    encrypted: bool,
    public_key: str | os.PathLike[str] | None = None,
    save_path: str | os.PathLike[str] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    fraction_train: float = 1.0,
    fraction_evaluate: float = 1.0,
    min_train_nodes: int = 2,
    min_evaluate_nodes: int = 2,
    min_available_nodes: int = 2,
) -> Strategy:
    """Build strategy ``name``, encrypted or as Flower's plaintext baseline.

    Parameters
    ----------
    name : str
        A strategy of :data:`cifer_flwr.strategies.REGISTRY` (case-insensitive).
    hyperparameters : mapping
        Every hyperparameter the strategy takes (``masking``, ``eta``, ...), typed.
    encrypted : bool
        Our encrypted strategy (``True``) or Flower's class of the same name.
    public_key : path, optional
        The federation's ``public.key``; required when ``encrypted``.
    save_path, checkpoint_path : path, optional
        Where an encrypted strategy writes its encrypted global model / its checkpoint.
    resume : bool (default: False)
        Continue from ``checkpoint_path`` (encrypted strategies only).
    fraction_train, fraction_evaluate : float (default: 1.0)
        Fractions of the available nodes sampled per round, in ``(0, 1]``.
    min_train_nodes, min_evaluate_nodes, min_available_nodes : int (default: 2)
        Flower's node minimums.

    Returns
    -------
    Strategy
        A :mod:`cifer_flwr.strategies` instance, or a :mod:`flwr.serverapp.strategy` one.

    Raises
    ------
    ConfigError
        For an unknown name, an invalid configuration (:func:`configuration_problems`),
        SecureFed without encryption, encryption without ``public_key``, or ``resume``
        without encryption or checkpoint path.

    """
    name = strategy_spec(name).name
    counts = (min_train_nodes, min_evaluate_nodes, min_available_nodes)
    problems = configuration_problems(
        name,
        hyperparameters,
        fraction_train=fraction_train,
        fraction_evaluate=fraction_evaluate,
        min_nodes=counts,
    )
    if problems:
        raise ConfigError(f"invalid {name} configuration: " + "; ".join(problems) + ".")
    kwargs: dict[str, Any] = {
        "fraction_train": fraction_train,
        "fraction_evaluate": fraction_evaluate,
        "min_train_nodes": min_train_nodes,
        "min_evaluate_nodes": min_evaluate_nodes,
        "min_available_nodes": min_available_nodes,
    }
    kwargs.update(hyperparameters)
    masking = bool(kwargs.pop("masking", False))
    if not encrypted:
        problem = plaintext_problem(name)
        if problem:
            raise ConfigError(problem + ".")
        if masking:
            raise ConfigError(
                "masking=true masks updates inside encrypted sums; turn encryption on with "
                "preset packed (encryption.preset=packed / run config encryption=true)."
            )
        checkpoint_options(PLAINTEXT_STRATEGIES[name], None, resume, encrypted=False)
        return PLAINTEXT_STRATEGIES[name](**kwargs)
    if public_key is None or not str(public_key):
        raise ConfigError(
            "encryption is on but no public key was given; pass the absolute path of the "
            "federation's public.key (run config 'public-key', e.g. --run-config "
            "'public-key=\"/abs/keys/NAME/public.key\"'), or turn encryption off."
        )
    cls: Any = ENCRYPTED_STRATEGIES[name]  # every encrypted class takes these keywords
    ckpt = Path(checkpoint_path) if checkpoint_path else None
    kwargs.update(checkpoint_options(cls, ckpt, resume, encrypted=True))
    save = Path(save_path) if save_path else None
    if masking:  # only passed when on: SecureFed refuses it with its own message
        kwargs["masking"] = True
    built: Strategy = cls(public_key=public_key, save_path=save, **kwargs)
    return built


def _run_config_value(h: Hyperparameter, value: Any) -> Any:
    """Run config ``value`` of hyperparameter ``h``, converted to the type of its default.

    Flags accept ``"true"``/``"1"``/... (:func:`_flag`); ``clip-norm = 0.0`` means no
    clipping (run config has no ``None``); other numbers accept their text (``"0.5"``) but
    not a bool, and an integer hyperparameter no fraction (Flower's run config values are
    bool, int, float or str).
    """
    if h.check == FLAG:
        return _flag(value)
    if h.check == POSITIVE_OR_NONE:
        return None if float(value) == 0.0 else float(value)
    integer = isinstance(h.default, int) and not isinstance(h.default, bool)
    target, kind = (int, "Integer") if integer else (float, "Float")
    try:
        if isinstance(value, bool) or (integer and isinstance(value, float)):
            raise ValueError(value)
        return target(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"invalid value for strategy.{h.name}: Value '{value}' of type "
            f"'{type(value).__name__}' could not be converted to {kind}"
        ) from None


def make_strategy(run_config: Mapping[str, Any]) -> Strategy:
    """Build the strategy that run config asks for, with :func:`build_strategy`.

    Keys read (all optional except ``public-key`` when encrypting): ``strategy`` (a name
    of :data:`cifer_flwr.strategies.REGISTRY`, default ``fedavg``), ``encryption`` (default
    true), ``public-key`` (absolute path to ``public.key``), ``save-path`` (absolute path of
    the encrypted global model, rewritten every round), ``fraction-train``,
    ``fraction-evaluate``, ``min-nodes`` (all three of Flower's node minimums, default 2),
    ``resume`` and the checkpoint path (:func:`checkpoint_path`), and the hyperparameters of
    :data:`~cifer_flwr.strategies.registry.RUN_CONFIG_KEYS`: ``proximal-mu``, ``server-lr``
    (FedOpt ``eta``), ``eta-l``, ``beta-1``, ``beta-2``, ``tau``, ``min-cohort``,
    ``clip-norm`` (``0.0``: no clipping, run config has no ``None``), ``noise-multiplier``,
    ``aggregation-check``, ``server-learning-rate`` and ``server-momentum`` (FedAvgM),
    ``masking`` (every strategy but SecureFed; preset ``packed``, docs/design.md §4.9); only
    those of the named strategy are read. A hyperparameter missing from run config takes
    the registry's default, the same default ``cifer run`` uses.

    Returns
    -------
    Strategy
        A :mod:`cifer_flwr.strategies` instance, or a :mod:`flwr.serverapp.strategy` one
        when ``encryption`` is false.

    Raises
    ------
    ConfigError
        For an unknown strategy, invalid hyperparameters, SecureFed without encryption, a
        missing or relative ``public-key`` path, or ``resume`` with a plaintext strategy.

    """
    spec = strategy_spec(run_config.get("strategy", "fedavg"))
    values = spec.defaults()
    for h in spec.hyperparameters:
        key = RUN_CONFIG_KEYS[h.name]
        if key in run_config:
            values[h.name] = _run_config_value(h, run_config[key])
    min_nodes = int(run_config.get("min-nodes", 2))
    encrypted = encryption_enabled(run_config)
    return build_strategy(
        spec.name,
        values,
        encrypted=encrypted,
        public_key=path_option(run_config, "public-key") if encrypted else None,
        save_path=path_option(run_config, "save-path") if encrypted else None,
        checkpoint_path=checkpoint_path(run_config) if encrypted else None,
        resume=resume_requested(run_config),
        fraction_train=float(run_config.get("fraction-train", 1.0)),
        fraction_evaluate=float(run_config.get("fraction-evaluate", 1.0)),
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes,
    )


def switched_ckks_mod(enabled: Callable[[Context], bool]) -> Mod:
    """:func:`~cifer_flwr.mods.ckks_mod` where ``enabled(context)`` holds, else a no-op.

    The one client mod of every entry point: the examples switch it with run config
    ``encryption`` (:data:`encryption_mod`), the generic app with its Hydra config.
    Peer-to-peer messages (type ``*.p2p``) always pass through: peers encrypt and decrypt
    their models themselves.
    """

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        p2p = msg.metadata.message_type.endswith(P2P_SUFFIX)
        if p2p or not enabled(context):
            return call_next(msg, context)
        return ckks_mod(msg, context, call_next)

    return mod


#: :func:`~cifer_flwr.mods.ckks_mod` when run config ``encryption`` is on, else a no-op:
#: one ClientApp thus serves both the encrypted run and its plaintext baseline.
encryption_mod: Mod = switched_ckks_mod(lambda context: encryption_enabled(context.run_config))
