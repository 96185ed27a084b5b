"""The four faces of a strategy agree with the library's registry (issue 20 item 3).

The registry (:data:`cifer_flwr.strategies.REGISTRY`) holds every strategy's
hyperparameters with defaults and ranges. The faces: the library's classes (ours and
Flower's of the same name), the Hydra dataclasses and the YAML rendered from them, FedLearn's
specifications, and the examples' run config (``RUN_CONFIG_KEYS``, read by
``cifer_flwr.apps.make_strategy``).
"""

from __future__ import annotations

import inspect
from dataclasses import fields
from typing import Any

import pytest
import yaml

from cifer_flwr import apps, strategies
from cifer_flwr.experiments import strategy_builder
from cifer_flwr.experiments.config import CONF_DIR, STRATEGIES, STRATEGY_CONFIGS
from cifer_flwr.fedlearn import strategy as fedlearn_strategy
from cifer_flwr.strategies.registry import REGISTRY, RUN_CONFIG_KEYS, StrategySpec

NAMES = list(REGISTRY)


def _constructor_default(cls: type, name: str) -> Any:
    param = inspect.signature(cls).parameters.get(name)
    return inspect.Parameter.empty if param is None else param.default


def test_every_face_lists_the_registry_strategies():
    assert NAMES == list(strategies.REGISTRY) == list(STRATEGIES) == list(STRATEGY_CONFIGS)
    assert list(fedlearn_strategy.STRATEGY_CLASSES) == NAMES
    assert {n: s.encrypted for n, s in REGISTRY.items()} == strategy_builder.ENCRYPTED_STRATEGIES
    for name, cls in fedlearn_strategy.STRATEGY_CLASSES.items():
        assert cls.name == name


@pytest.mark.parametrize("name", NAMES)
def test_library_classes_take_the_registry_defaults(name):
    spec: StrategySpec = REGISTRY[name]
    for h in spec.hyperparameters:
        ours = _constructor_default(spec.encrypted, h.name)
        if spec.plaintext is not None and h.name != "masking":
            flower = _constructor_default(spec.plaintext, h.name)
            assert flower == h.default, (name, h.name, "Flower's default", flower)
            # our class takes it itself or forwards it to Flower's constructor
            assert ours in (h.default, inspect.Parameter.empty), (name, h.name, ours)
        else:
            assert ours == h.default, (name, h.name, ours)


@pytest.mark.parametrize("name", NAMES)
def test_hydra_dataclass_and_yaml_hold_the_registry_defaults(name):
    spec = REGISTRY[name]
    cls = STRATEGY_CONFIGS[name]
    declared = {f.name: f for f in fields(cls) if f.name != "name"}
    assert list(declared) == [h.name for h in spec.hyperparameters]
    for h in spec.hyperparameters:
        assert declared[h.name].default == h.default, (name, h.name)
        assert declared[h.name].metadata["check"] == h.check
    rendered = yaml.safe_load((CONF_DIR / "strategy" / f"{name}.yaml").read_text())
    assert rendered == {"name": name, **spec.defaults()}


@pytest.mark.parametrize("name", NAMES)
def test_fedlearn_spec_takes_the_registry_hyperparameters(name, tmp_path):
    data, model = tmp_path / "d.npz", tmp_path / "m.npz"
    data.write_bytes(b"x")
    model.write_bytes(b"x")
    spec = fedlearn_strategy.STRATEGY_CLASSES[name](data, model)
    assert {h: getattr(spec.params, h) for h in spec.params.hyperparameters()} == (
        REGISTRY[name].defaults()
    )


def test_run_config_keys_are_the_registry_keys():
    assert strategy_builder.RUN_CONFIG_KEYS is RUN_CONFIG_KEYS
    for spec in REGISTRY.values():
        for h in spec.hyperparameters:
            assert RUN_CONFIG_KEYS[h.name] == h.run_config_key
    # one key per name across strategies, and no two names share a key
    assert len(set(RUN_CONFIG_KEYS.values())) == len(RUN_CONFIG_KEYS)


@pytest.mark.parametrize("name", [n for n, s in REGISTRY.items() if s.plaintext is not None])
def test_run_config_without_hyperparameters_builds_the_registry_defaults(name):
    built = apps.make_strategy({"strategy": name, "encryption": False})
    assert type(built) is REGISTRY[name].plaintext
    for h in REGISTRY[name].hyperparameters:
        if h.name != "masking":
            assert getattr(built, h.name) == h.default, (name, h.name)


@pytest.mark.parametrize(
    ("name", "field", "before"),
    [
        ("fedadam", "eta", 0.01),
        ("fedprox", "proximal_mu", 0.1),
        ("fedavgm", "server_momentum", 0.5),
    ],
)
def test_the_defaults_that_disagreed_are_the_library_ones(name, field, before):
    # cifer run used these (conf/strategy/*.yaml) while the classes default to Flower's values
    value = REGISTRY[name].hyperparameter(field).default
    assert value != before
    assert value == _constructor_default(REGISTRY[name].plaintext, field)
    assert getattr(STRATEGY_CONFIGS[name](), field) == value
