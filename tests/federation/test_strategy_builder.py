"""One strategy builder: the run-config path and the Hydra path build the same strategy.

The examples' ServerApps (``cifer_flwr.apps.make_strategy(run_config)``) and the generic app
behind ``cifer run`` / ``cifer demo`` (``topology.centralized.make_strategy(exp)``, through the
typed configs of ``strategy_builder.build_strategy``) both reach the library's one
``cifer_flwr.apps.runconfig.build_strategy``; a configuration must mean the same strategy, and
an invalid value must fail the same way, whichever path reads it.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from flwr.app import Context, RecordDict

from cifer_flwr import apps
from cifer_flwr.exceptions import ConfigError, KeyFileError
from cifer_flwr.experiments.app import client_app
from cifer_flwr.experiments.config import (
    STRATEGIES,
    FedAvgConfig,
    compose,
    strategy_config,
    strategy_defaults,
)
from cifer_flwr.experiments.strategy_builder import (
    RUN_CONFIG_KEYS,
    baseline_name,
    build_strategy,
)
from cifer_flwr.experiments.topology import centralized

NODES = 3
#: Hyperparameters each strategy takes (written out: an oracle for the typed configs).
TAKES = {
    "fedavg": set(),
    "fedprox": {"proximal_mu"},
    "fedyogi": {"eta", "eta_l", "beta_1", "beta_2", "tau"},
    "fedadam": {"eta", "eta_l", "beta_1", "beta_2", "tau"},
    "fedadagrad": {"eta", "eta_l", "tau"},
    "fedavgm": {"server_learning_rate", "server_momentum"},
    "securefed": {"min_cohort", "clip_norm", "noise_multiplier", "aggregation_check"},
}
TAKES = {name: takes | {"masking"} for name, takes in TAKES.items()}  # every strategy (§4.9)
#: Attributes a built strategy exposes (those it has are compared).
ATTRS = (
    "fraction_train",
    "fraction_evaluate",
    "min_train_nodes",
    "min_evaluate_nodes",
    "min_available_nodes",
    *sorted(set().union(*TAKES.values())),
)


def test_typed_configs_take_exactly_their_hyperparameters():
    assert set(STRATEGIES) == set(TAKES)
    for name, takes in TAKES.items():
        assert set(strategy_defaults(name).hyperparameters()) == takes, name


def _attrs(strategy: Any) -> dict[str, Any]:
    return {a: getattr(strategy, a) for a in ATTRS if hasattr(strategy, a)}


def _both(name: str, pub: str, *, encrypted: bool, rc: dict[str, Any], hydra: list[str]):
    """(run-config strategy, Hydra strategy) for the same configuration."""
    run_config = {
        "strategy": name,
        "encryption": encrypted,
        "public-key": pub,
        "min-nodes": NODES,
        **rc,
    }
    exp = compose(
        [
            f"strategy={name}",
            f"encryption={'ckks' if encrypted else 'none'}",
            f"federation.nodes={NODES}",
            *hydra,
        ]
    )
    return (
        apps.make_strategy(run_config),
        centralized.make_strategy(exp, public_key=pub if encrypted else None),
    )


# SecureFed without encryption is refused by both: test_securefed_needs_encryption_everywhere
@pytest.mark.parametrize(
    ("name", "encrypted"),
    [(n, e) for n in STRATEGIES for e in (True, False) if e or n != "securefed"],
)
def test_both_paths_build_equal_strategies_with_defaults(name, encrypted, key_files):
    _, pub = key_files
    from_rc, from_exp = _both(name, str(pub), encrypted=encrypted, rc={}, hydra=[])
    assert type(from_rc) is type(from_exp)
    assert _attrs(from_rc) == _attrs(from_exp)
    # the defaults are those of conf/strategy/NAME.yaml
    defaults = strategy_defaults(name)
    got = _attrs(from_rc)
    for field in TAKES[name] - (set() if encrypted else {"masking"}):  # Flower has no masking
        assert got[field] == getattr(defaults, field), field


#: Non-default values per hyperparameter: (run config value, Hydra value, built value).
CHANGED = {
    "proximal_mu": (0.25, "0.25", 0.25),
    "eta": (0.2, "0.2", 0.2),
    "eta_l": (0.05, "0.05", 0.05),
    "beta_1": (0.5, "0.5", 0.5),
    "beta_2": (0.75, "0.75", 0.75),
    "tau": (0.01, "0.01", 0.01),
    "min_cohort": (2, "2", 2),
    "clip_norm": (1.5, "1.5", 1.5),
    "noise_multiplier": (0.5, "0.5", 0.5),
    "aggregation_check": (False, "false", False),
    "server_learning_rate": (0.5, "0.5", 0.5),
    "server_momentum": (0.3, "0.3", 0.3),
}


@pytest.mark.parametrize("name", STRATEGIES)
def test_both_paths_pass_every_hyperparameter(name, key_files):
    _, pub = key_files
    # run config declares every key (make_strategy reads the strategy's); Hydra refuses
    # keys the strategy does not take (test_override_of_a_key_the_strategy_lacks_fails)
    rc = {RUN_CONFIG_KEYS[f]: v for f, (v, _, _) in CHANGED.items()}
    hydra = [f"strategy.{f}={h}" for f, (_, h, _) in CHANGED.items() if f in TAKES[name]]
    rc |= {"fraction-train": 0.5}
    hydra += ["fraction_train=0.5"]
    from_rc, from_exp = _both(name, str(pub), encrypted=True, rc=rc, hydra=hydra)
    assert type(from_rc) is type(from_exp)
    got_rc, got_exp = _attrs(from_rc), _attrs(from_exp)
    # node minimums are translated differently (min-nodes vs nodes and fractions)
    for key in ("min_train_nodes", "min_evaluate_nodes", "min_available_nodes"):
        got_rc.pop(key, None)
        got_exp.pop(key, None)
    assert got_rc == got_exp
    assert got_rc["fraction_train"] == 0.5
    # the hyperparameters this strategy takes are all passed (masking needs a packed key:
    # tests/strategies/test_masking.py builds it from run config and Hydra)
    for field in TAKES[name] - {"masking"}:
        assert got_rc[field] == CHANGED[field][2], field


def test_run_config_clip_norm_zero_means_no_clipping(key_files):
    _, pub = key_files
    strategy = apps.make_strategy(
        {"strategy": "securefed", "public-key": str(pub), "clip-norm": 0.0}
    )
    assert strategy.clip_norm is None  # type: ignore[attr-defined]


def test_securefed_needs_encryption_everywhere():
    with pytest.raises(ConfigError, match="no plaintext baseline"):
        apps.make_strategy({"strategy": "securefed", "encryption": False})
    # cifer run: refused when composing, before anything starts ...
    with pytest.raises(ConfigError, match="no plaintext baseline"):
        compose(["strategy=securefed", "encryption=none"])
    # ... and by the builder for a hand-made config
    exp = compose(["strategy=securefed"])
    exp.encryption.enabled = False
    with pytest.raises(ConfigError, match="no plaintext baseline"):
        centralized.make_strategy(exp, public_key=None)
    # the demo compares SecureFed with FedAvg, asked for by name
    assert baseline_name("securefed") == "fedavg"
    assert baseline_name("FedYogi") == "fedyogi"


#: (strategy, field, invalid value, problem text both paths report)
INVALID = [
    ("fedyogi", "eta", 0.0, "strategy.eta (run config 'server-lr') must be > 0"),
    ("fedadam", "eta_l", -0.1, "strategy.eta_l (run config 'eta-l') must be > 0"),
    ("fedyogi", "beta_1", 1.0, "strategy.beta_1 (run config 'beta-1') must be in [0, 1)"),
    ("fedadam", "beta_2", -0.5, "strategy.beta_2 (run config 'beta-2') must be in [0, 1)"),
    ("fedadagrad", "tau", 0.0, "strategy.tau (run config 'tau') must be > 0"),
    ("fedprox", "proximal_mu", -1.0, "strategy.proximal_mu (run config 'proximal-mu') must"),
    ("securefed", "clip_norm", -2.0, "strategy.clip_norm (run config 'clip-norm') must be > 0"),
    ("securefed", "noise_multiplier", -1.0, "run config 'noise-multiplier') must be >= 0"),
    ("securefed", "min_cohort", 1, "strategy.min_cohort (run config 'min-cohort') must be >= 2"),
    ("fedyogi", "eta", -1.0, "strategy.eta (run config 'server-lr') must be > 0, got -1.0"),
    ("fedadam", "tau", float("nan"), "strategy.tau (run config 'tau') must be > 0, got nan"),
    (
        "fedavgm",
        "server_momentum",
        1.0,
        "strategy.server_momentum (run config 'server-momentum') must be in [0, 1)",
    ),
    (
        "fedavgm",
        "server_learning_rate",
        0.0,
        "strategy.server_learning_rate (run config 'server-learning-rate') must be > 0",
    ),
]


@pytest.mark.parametrize(("name", "field", "bad", "problem"), INVALID)
def test_invalid_values_fail_the_same_way_in_both_paths(name, field, bad, problem, key_files):
    _, pub = key_files
    with pytest.raises(ConfigError) as from_rc:
        apps.make_strategy({"strategy": name, "public-key": str(pub), RUN_CONFIG_KEYS[field]: bad})
    # the Hydra path: refused when composing, and by the builder for a hand-made config
    with pytest.raises(ConfigError) as from_compose:
        compose([f"strategy={name}", f"++strategy.{field}={bad}"])
    exp = compose([f"strategy={name}"])
    setattr(exp.strategy, field, bad)
    with pytest.raises(ConfigError) as from_exp:
        centralized.make_strategy(exp, public_key=str(pub))
    for exc in (from_rc, from_compose, from_exp):
        assert problem in str(exc.value)
    assert str(from_rc.value) == str(from_exp.value)


#: Run-config values of every type Flower's run config holds (bool, int, float, str).
RAW_VALUES = (
    *("0.5", "3", "3.0", " 2 ", "x", "", "nan", "inf", "1e3", "-1", "0x10", "1_000", "0"),
    *(2, 3, 0, -2, 0.5, 2.0, 0.0, float("inf"), True, False),
)


def _typed_value(field: str, raw: Any) -> Any:
    """What make_strategy passed to the typed config before it moved into the library."""
    return (None if float(raw) == 0.0 else float(raw)) if field == "clip_norm" else raw


@pytest.mark.parametrize(
    ("name", "field"),
    [
        (n, f)
        for n in STRATEGIES
        for f in sorted(TAKES[n] - {"masking", "aggregation_check"})  # flags: _flag, as before
    ],
)
def test_run_config_values_convert_as_the_typed_configs_do(name, field, key_files):
    """make_strategy converts run config without the harness: the typed config (OmegaConf's
    conversion, what make_strategy used before it moved into the library) is the oracle."""
    _, pub = key_files

    def outcome(build: Any) -> Any:
        try:
            return getattr(build(), field)
        except (ConfigError, ValueError) as exc:
            return type(exc), str(exc)

    for raw in RAW_VALUES:
        expected = outcome(
            lambda raw=raw: build_strategy(
                strategy_config({"name": name, field: _typed_value(field, raw)}),
                encrypted=True,
                public_key=pub,
            )
        )
        got = outcome(
            lambda raw=raw: apps.make_strategy(
                {"strategy": name, "public-key": str(pub), RUN_CONFIG_KEYS[field]: raw}
            )
        )
        assert repr(got) == repr(expected), (field, raw)


@pytest.mark.parametrize("fraction", [0.0, 1.5])
def test_invalid_fraction_fails_the_same_way(fraction, key_files):
    _, pub = key_files
    problem = f"fraction_train must be in (0, 1], got {fraction}"
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(").replace("]", r"\]")):
        apps.make_strategy({"public-key": str(pub), "fraction-train": fraction})
    with pytest.raises(ConfigError, match=r"fraction_train must be in \(0, 1\]"):
        compose([f"fraction_train={fraction}"])
    with pytest.raises(ConfigError, match=r"fraction_train must be in \(0, 1\]"):
        build_strategy(FedAvgConfig(), encrypted=False, fraction_train=fraction)


def test_noise_needs_clipping_in_both_paths(key_files):
    _, pub = key_files
    with pytest.raises(ConfigError, match=r"needs strategy\.clip_norm"):
        apps.make_strategy(
            {"strategy": "securefed", "public-key": str(pub), "noise-multiplier": 1.0}
        )
    with pytest.raises(ConfigError, match=r"needs strategy\.clip_norm"):
        compose(["strategy=securefed", "++strategy.noise_multiplier=1.0"])


def test_examples_declare_every_hyperparameter_key():
    """Flower rejects run-config keys an app does not declare: every example declares all."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "examples"
    projects = sorted(root.glob("*/pyproject.toml"))
    assert len(projects) == 3
    optional = {"eta-l"}  # defaults per strategy from conf/strategy/*.yaml
    for project in projects:
        declared = tomllib.loads(project.read_text())["tool"]["flwr"]["app"]["config"]
        missing = set(RUN_CONFIG_KEYS.values()) - optional - set(declared)
        assert not missing, f"{project}: {missing}"
        # the declared defaults are the registry's (server-lr and server-momentum are each
        # example's choice)
        for field in ("beta_1", "beta_2", "tau"):
            assert declared[RUN_CONFIG_KEYS[field]] == getattr(strategy_defaults("fedadam"), field)
        securefed = strategy_defaults("securefed")
        assert declared["min-cohort"] == securefed.min_cohort
        assert declared["clip-norm"] == 0.0 and securefed.clip_norm is None
        assert declared["noise-multiplier"] == securefed.noise_multiplier
        assert declared["aggregation-check"] is securefed.aggregation_check
        fedavgm = strategy_defaults("fedavgm")
        assert declared["server-learning-rate"] == fedavgm.server_learning_rate
        assert 0.0 <= declared["server-momentum"] < 1.0


def _context(run_config: dict[str, Any], node_config: dict[str, Any]) -> Context:
    return Context(
        run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=run_config
    )


def test_one_client_mod_for_examples_and_generic_app(monkeypatch):
    from cifer_flwr.constants import ENV_PRIVATE_KEY

    assert apps.encryption_mod.__qualname__ == client_app.encryption_mod.__qualname__
    assert client_app.app._mods == [client_app.encryption_mod]
    calls = []

    def call_next(msg: Any, context: Context) -> Any:
        calls.append(msg.metadata.message_type)
        return msg

    def message(message_type: str) -> Any:  # the mod reads only the type before call_next
        return SimpleNamespace(metadata=SimpleNamespace(message_type=message_type))

    # p2p messages pass through even with encryption on (no key needed)
    apps.encryption_mod(message("train.p2p"), _context({"encryption": True}, {}), call_next)
    # plaintext baseline: a no-op
    msg = message("train")
    apps.encryption_mod(msg, _context({"encryption": False}, {}), call_next)
    assert calls == ["train.p2p", "train"]
    # encryption on: ckks_mod runs (and refuses before call_next: no private key here)
    monkeypatch.delenv(ENV_PRIVATE_KEY, raising=False)
    with pytest.raises(Exception, match="Invalid arguments for Message"):
        apps.encryption_mod(msg, _context({"encryption": True}, {}), call_next)
    assert calls == ["train.p2p", "train"]


def test_generic_client_uses_the_shared_key_loader(key_files, monkeypatch):
    from cifer_flwr import mods
    from cifer_flwr.constants import ENV_PRIVATE_KEY, NODE_CONFIG_PRIVATE_KEY
    from cifer_flwr.experiments.experiment import ClientRuntime

    monkeypatch.delenv(ENV_PRIVATE_KEY, raising=False)
    priv, _ = key_files
    exp = compose([])
    node = {"partition-id": 0, "num-partitions": 3, NODE_CONFIG_PRIVATE_KEY: str(priv)}
    context = _context({}, node)
    runtime = ClientRuntime(exp, context)
    assert runtime.key is mods.private_key_for(context)  # one cached key, one loader
    with pytest.raises(KeyFileError, match="private key"):
        ClientRuntime(exp, _context({}, {"partition-id": 0, "num-partitions": 3}))
