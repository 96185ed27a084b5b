"""Typed per-strategy configs, defaults from one place, and the one validation path."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cifer_flwr.exceptions import ConfigError
from cifer_flwr.experiments.config import (
    CONF_DIR,
    STRATEGIES,
    ExperimentConfig,
    FedAvgMConfig,
    FedYogiConfig,
    SecureFedConfig,
    check_experiment,
    compose,
    overrides_to_string,
    strategy_config,
    strategy_defaults,
    strategy_yaml,
    write_strategy_yaml,
)
from cifer_flwr.experiments.tasks import TASKS
from cifer_flwr.tooling.demo import demo_experiment, run_demo


def test_strategy_yaml_files_are_rendered_from_the_dataclass_defaults(tmp_path):
    """One source: conf/strategy/NAME.yaml is the rendering of NAME's dataclass defaults."""
    files = {p.stem for p in (CONF_DIR / "strategy").glob("*.yaml")}
    assert files == set(STRATEGIES)
    for name in STRATEGIES:
        path = CONF_DIR / "strategy" / f"{name}.yaml"
        assert path.read_text() == strategy_yaml(name), (
            f"{path} differs from its dataclass; run `python -m cifer_flwr.experiments.config`"
        )
        # and Hydra composes exactly the dataclass defaults from it
        assert compose([f"strategy={name}"]).strategy == strategy_defaults(name)
    written = write_strategy_yaml(tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{n}.yaml" for n in STRATEGIES)


def test_a_changed_default_would_be_caught(monkeypatch):
    # the check above can fail: a default that differs from the YAML renders differently
    monkeypatch.setattr(FedYogiConfig.__dataclass_fields__["eta"], "default", 0.5, raising=True)
    assert strategy_yaml("fedyogi") != (CONF_DIR / "strategy" / "fedyogi.yaml").read_text()


def test_every_task_has_its_yaml():
    assert {p.stem for p in (CONF_DIR / "task").glob("*.yaml")} == set(TASKS)


@pytest.mark.parametrize(
    ("overrides", "valid"),
    [
        (["strategy=fedyogi", "strategy.proximal_mu=0.1"], "eta, eta_l, beta_1, beta_2, tau"),
        (["strategy=fedyogi", "++strategy.proximal_mu=0.1"], "eta, eta_l, beta_1, beta_2, tau"),
        (["strategy=fedavgm", "+strategy.eta=0.1"], "server_learning_rate, server_momentum"),
        (["strategy.eta=0.1"], "no hyperparameters"),
        (["strategy=securefed", "strategy.beta_1=0.5"], "min_cohort, clip_norm"),
    ],
)
def test_override_of_a_key_the_strategy_lacks_fails_naming_the_valid_keys(overrides, valid):
    with pytest.raises(ConfigError) as exc:
        compose(overrides)
    message = str(exc.value)
    assert "\n" not in message
    assert "not a hyperparameter of" in message and valid in message


def test_strategy_config_types_and_refusals():
    built = strategy_config({"name": "FedAvgM", "server_momentum": "0.25"})
    assert built == FedAvgMConfig(server_momentum=0.25)
    assert isinstance(strategy_config({"name": "securefed", "min_cohort": 4}), SecureFedConfig)
    with pytest.raises(ConfigError, match="takes server_learning_rate, server_momentum"):
        strategy_config({"name": "fedavgm", "eta": 0.1})
    with pytest.raises(ConfigError, match=r"strategy\.server_momentum"):
        strategy_config({"name": "fedavgm", "server_momentum": "fast"})


@pytest.mark.parametrize("name", STRATEGIES)
def test_override_string_round_trips_every_strategy(name):
    exp = compose([f"strategy={name}", "federation.nodes=4", "num_rounds=2"])
    assert compose(overrides_to_string(exp)) == exp


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["strategy=fedyoga"], "strategy='fedyoga' is unknown; choose one of fedavg, fedprox"),
        (["task=cifar"], "task='cifar' is unknown; choose one of breast-cancer-sklearn"),
        (["federation=cloud"], "federation='cloud' is unknown; choose one of local"),
        (["strategy=fedyogi", "strategy.eta=-1"], "strategy.eta (run config 'server-lr') must"),
        (["strategy=fedadam", "strategy.beta_2=1.5"], "beta_2 (run config 'beta-2') must be in"),
        (["strategy=fedprox", "strategy.proximal_mu=-0.1"], "proximal_mu (run config"),
        (["strategy=fedavgm", "strategy.server_momentum=-0.5"], "server_momentum (run config"),
        (["topology.graph=star"], "topology.graph"),
        (["federation.kind=cloud"], "federation.kind"),
        (["topology=p2p", "strategy=fedyogi"], "topology=p2p mixes the peers' models"),
        (["strategy=securefed", "federation.nodes=2"], "min_cohort (3) exceeds federation.nodes"),
    ],
)
def test_invalid_options_are_one_line_errors(overrides, expected):
    with pytest.raises(ConfigError) as exc:
        compose(overrides)
    assert expected in str(exc.value)
    assert "\n" not in str(exc.value)


def test_check_experiment_refuses_a_hand_made_untyped_strategy():
    from cifer_flwr.experiments.config import StrategyConfig

    with pytest.raises(ConfigError, match="strategy_config"):
        check_experiment(ExperimentConfig(strategy=StrategyConfig(name="fedavg")))


def test_demo_validates_through_the_same_path_before_anything_starts(tmp_path):
    work = tmp_path / "demo"
    with pytest.raises(ConfigError) as exc:
        run_demo(work, strategy="fedyoga")
    assert str(exc.value) == (
        "strategy='fedyoga' is unknown; choose one of " + ", ".join(STRATEGIES) + "."
    )
    assert not work.exists()  # no directory, no keys, no federation
    with pytest.raises(ConfigError, match="min_cohort"):
        run_demo(work, strategy="securefed", nodes=2)
    with pytest.raises(ConfigError, match="num_rounds must be >= 1"):
        run_demo(work, rounds=0)
    assert not work.exists()
    assert demo_experiment("FedAvgM", nodes=3, rounds=2, auth=True, timeout=60).strategy == (
        FedAvgMConfig()
    )


def test_cifer_demo_unknown_strategy_is_one_line(tmp_path):
    from cifer_flwr.cli import app

    result = CliRunner().invoke(
        app, ["demo", "--strategy", "fedyoga", "--dir", str(tmp_path / "d")]
    )
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "fedyoga" in lines[0] and "fedavgm" in lines[0], result.output
    assert not (tmp_path / "d").exists()
