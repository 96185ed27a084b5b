"""The encrypted demo: a real local Flower deployment, encrypted vs plaintext, end to end.

:func:`run_demo` generates a CKKS key pair, starts a SuperLink (TLS, SuperNode
authentication) and N SuperNodes on 127.0.0.1, runs the PyTorch quickstart with an
encrypted strategy and then the same run with Flower's plaintext strategy, stops every
process it started (also on Ctrl-C or an error), decrypts the saved encrypted final model
with the private key and evaluates it on held-out data, and checks that no secret key
reached the server side's files.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from cifer_flwr import crypto, statistics
from cifer_flwr import masking as secagg
from cifer_flwr.apps.data import load_dataset
from cifer_flwr.exceptions import CiferError, ConfigError
from cifer_flwr.experiments.config import (
    EncryptionConfig,
    ExperimentConfig,
    FederationConfig,
    check_experiment,
    strategy_config,
)
from cifer_flwr.experiments.strategy_builder import baseline_name
from cifer_flwr.statistics import FeatureStats
from cifer_flwr.tooling.federation.audit import find_secret_key
from cifer_flwr.tooling.federation.local import Federation, up
from cifer_flwr.tooling.federation.runs import RunOutcome, run_app

__all__ = [
    "DemoReport",
    "demo_experiment",
    "evaluate_with_example",
    "find_example",
    "run_demo",
]

EXAMPLE = "quickstart-pytorch"
ENV_EXAMPLES = "CIFER_EXAMPLES"


def find_example(name: str = EXAMPLE) -> Path:
    """Locate an example app: ``$CIFER_EXAMPLES/NAME``, the source checkout, or ``./examples``.

    Raises
    ------
    ConfigError
        When the example cannot be found (e.g. a wheel install without the repository).

    """
    candidates = []
    if os.environ.get(ENV_EXAMPLES):
        candidates.append(Path(os.environ[ENV_EXAMPLES]) / name)
    candidates.append(Path(__file__).resolve().parents[2] / "examples" / name)
    candidates.append(Path.cwd() / "examples" / name)
    for c in candidates:
        if (c / "pyproject.toml").is_file():
            return c.resolve()
    raise ConfigError(
        f"example {name!r} not found (looked in {', '.join(map(str, candidates))}); install "
        "cifer-flwr from a clone (pip install -e .) or set "
        f"{ENV_EXAMPLES}=/path/to/cifer-flwr/examples."
    )


@contextlib.contextmanager
def _on_path(directory: Path) -> Iterator[None]:
    sys.path.insert(0, str(directory))
    try:
        yield
    finally:
        sys.path.remove(str(directory))


def _task_module(app_dir: Path) -> ModuleType:
    packages = [p for p in app_dir.iterdir() if (p / "task.py").is_file()]
    if len(packages) != 1:
        raise ConfigError(f"{app_dir} should hold one package with a task.py.")
    with _on_path(app_dir):
        return importlib.import_module(f"{packages[0].name}.task")


def evaluate_with_example(
    app_dir: Path,
    arrays: Mapping[str, np.ndarray],
    run_config: Mapping[str, Any],
    scaling: FeatureStats | None = None,
) -> dict[str, float]:
    """Evaluate plaintext model arrays with the example's ``task.evaluate_arrays``.

    The examples evaluate on raw held-out rows: ``arrays`` take raw rows, or come with the
    federation's ``scaling`` (docs/design.md §4.10), as
    :func:`~cifer_flwr.statistics.decrypt_model_and_scaling` returns them.
    """
    module = _task_module(app_dir)
    return dict(module.evaluate_arrays(arrays, run_config, scaling))


def demo_experiment(
    strategy: str, *, nodes: int, rounds: int, auth: bool, timeout: float, masking: bool = False
) -> ExperimentConfig:
    """The demo's options as an experiment, checked by the one validation path.

    :func:`~cifer_flwr.experiments.config.check_experiment` (as ``cifer run`` and the
    generic app) runs before anything starts: an unknown strategy, too few nodes, SecureFed's
    cohort above the node count, ... fail in one line before key generation.

    Raises
    ------
    ConfigError
        Naming the option, the value found and the valid values.

    """
    return check_experiment(
        ExperimentConfig(
            strategy=strategy_config({"name": strategy, "masking": masking}),
            encryption=EncryptionConfig(preset="packed" if masking else "default"),
            federation=FederationConfig(nodes=nodes, tls=True, auth=auth, timeout=timeout),
            num_rounds=rounds,
        )
    )


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@dataclass
class DemoReport:
    """Everything the demo measured (``to_dict`` is what ``--json`` prints)."""

    directory: Path
    example: Path
    strategy: str
    nodes: int
    fingerprint: str = ""
    masking: bool = False
    federation_s: float = 0.0
    teardown_s: float = 0.0
    stopped: int = 0
    encrypted: dict[str, Any] = field(default_factory=dict)
    plaintext: dict[str, Any] = field(default_factory=dict)
    encrypted_run_s: float = 0.0
    plaintext_run_s: float = 0.0
    model_file: Path | None = None
    model_bytes: int = 0
    final_encrypted: dict[str, float] = field(default_factory=dict)
    final_plaintext: dict[str, float] = field(default_factory=dict)
    secret_hits: list[Path] = field(default_factory=list)
    scanned: int = 0
    total_s: float = 0.0

    def rounds(self) -> list[dict[str, Any]]:
        """Per-round rows pairing the encrypted and the plaintext run."""
        enc = self.encrypted.get("rounds", [])
        pla = {r["round"]: r for r in self.plaintext.get("rounds", [])}
        return [
            {"round": r["round"], "encrypted": r, "plaintext": pla.get(r["round"], {})} for r in enc
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        return {
            "directory": str(self.directory),
            "strategy": self.strategy,
            "nodes": self.nodes,
            "key-fingerprint": self.fingerprint,
            "masking": self.masking,
            "federation-start-s": self.federation_s,
            "encrypted-run-s": self.encrypted_run_s,
            "plaintext-run-s": self.plaintext_run_s,
            "final-encrypted": self.final_encrypted,
            "final-plaintext": self.final_plaintext,
            "model-file": str(self.model_file) if self.model_file else None,
            "model-bytes": self.model_bytes,
            "secret-key-found-in": [str(p) for p in self.secret_hits],
            "files-scanned": self.scanned,
            "total-s": self.total_s,
            "rounds": self.rounds(),
        }


def _check(outcome: RunOutcome, what: str) -> dict[str, Any]:
    if not outcome.clean or outcome.results is None:
        raise CiferError(
            f"the {what} run {outcome.run_id} ended '{outcome.status}': "
            f"{'; '.join(outcome.errors) or 'see the log'} (log: {outcome.log_path})"
        )
    return outcome.results


def run_demo(
    directory: str | os.PathLike[str] = ".cifer/demo",
    *,
    nodes: int = 3,
    rounds: int = 3,
    strategy: str = "fedavg",
    auth: bool = True,
    timeout: float = 600.0,
    progress: Callable[[str], None] | None = None,
    on_round: Callable[[str], None] | None = None,
    masking: bool = False,
) -> DemoReport:
    """Run the encrypted demo and return what it measured.

    Parameters
    ----------
    directory : str or path
        Working directory (keys, federation, results, final model); reused runs overwrite.
    nodes : int
        Number of SuperNodes (one data partition each).
    rounds : int
        Federated rounds of each run.
    strategy : str
        One of :data:`cifer_flwr.experiments.config.STRATEGIES`; the plaintext run uses
        :func:`~cifer_flwr.experiments.strategy_builder.baseline_name` (FedAvg for SecureFed).
    auth : bool
        SuperNode authentication (TLS is always on).
    timeout : float
        Outer timeout of each run in seconds.
    progress : callable, optional
        Called with a short message before each step.
    on_round : callable, optional
        Called with each round's progress line as the round ends, prefixed with the run
        (``encrypted: [cifer] round 1/3: replies 3 accepted, ...``).
    masking : bool
        Secure aggregation in the encrypted run (docs/design.md §4.9): keys of preset
        ``packed``, an Ed25519 identity per SuperNode and a roster every node checks.

    Returns
    -------
    DemoReport
        Per-round metrics of both runs, final accuracies, timings, files.

    Raises
    ------
    ConfigError
        For an invalid option (:func:`demo_experiment`), before anything starts.
    CiferError
        When a run fails; every process started is stopped first.

    """
    # every option is checked before anything starts (keys, federation)
    strategy = demo_experiment(
        strategy, nodes=nodes, rounds=rounds, auth=auth, timeout=timeout, masking=masking
    ).strategy.name
    say = progress or (lambda _msg: None)
    t_start = time.monotonic()
    d = Path(directory).resolve()
    d.mkdir(parents=True, exist_ok=True)
    example = find_example()
    report = DemoReport(
        directory=d, example=example, strategy=strategy, nodes=nodes, masking=masking
    )

    say("preparing the digits dataset (cached for the ClientApps)")
    load_dataset("digits")
    preset = "packed" if masking else "default"
    say(f"generating a key pair (preset {preset})")
    key = crypto.generate_key(preset)
    private, public = crypto.write_key_pair(key, d / "keys" / "demo", force=True)
    report.fingerprint = key.fingerprint
    node_configs: dict[int, dict[str, str]] = {}
    if masking:
        say(f"masking: an identity per SuperNode and a roster of {nodes}")
        idents = [
            secagg.write_identity(d / "keys" / f"site-{i}", f"site-{i}", force=True)
            for i in range(nodes)
        ]
        roster = secagg.write_roster(
            d / "keys" / "roster.json", [pub for _, pub in idents], min_cohort=min(3, nodes)
        )
        node_configs = {
            i: {"identity-key": str(ident), "roster": str(roster)}
            for i, (ident, _) in enumerate(idents)
        }

    say(f"starting a SuperLink (TLS{', node auth' if auth else ''}) and {nodes} SuperNodes")
    t0 = time.monotonic()
    fed: Federation = up(
        d / "federation",
        nodes=nodes,
        tls=True,
        auth=auth,
        private_key=private,
        public_key=public,
        node_configs=node_configs,
    )
    report.federation_s = time.monotonic() - t0
    model_file = d / "final_model.enc"
    plain_file = d / "final_model_plaintext.npz"
    base: dict[str, bool | int | float | str] = {
        "strategy": strategy,
        "num-server-rounds": rounds,
        "min-nodes": nodes,
    }
    try:
        say(f"encrypted run: {rounds} rounds of {strategy} on ciphertexts")
        model_file.unlink(missing_ok=True)
        enc = run_app(
            fed,
            example,
            {
                **base,
                "encryption": True,
                "public-key": str(public),
                "save-path": str(model_file),
                **({"masking": True} if masking else {}),
            },
            timeout=timeout,
            results_path=d / "results-encrypted.json",
            on_round=None if on_round is None else (lambda line: on_round(f"encrypted: {line}")),
        )
        report.encrypted = _check(enc, "encrypted")
        report.encrypted_run_s = enc.seconds
        baseline = baseline_name(strategy)
        say(f"plaintext run: the same {rounds} rounds with Flower's own {baseline}")
        pla = run_app(
            fed,
            example,
            {
                **base,
                "strategy": baseline,
                "encryption": False,
                "save-path": str(plain_file),
            },
            timeout=timeout,
            results_path=d / "results-plaintext.json",
            on_round=None if on_round is None else (lambda line: on_round(f"plaintext: {line}")),
        )
        report.plaintext = _check(pla, "plaintext")
        report.plaintext_run_s = pla.seconds
    finally:
        say("stopping every process the demo started")
        t0 = time.monotonic()
        report.stopped = len(fed.stop())
        report.teardown_s = time.monotonic() - t0

    say("scanning the server side's files for secret key material")
    server_side = [
        d / "federation" / "home" / "superlink",
        d / "federation" / "logs" / "superlink.log",
        d / "federation" / "flwr-home",
        d / "federation" / "runs",
        d / "results-encrypted.json",
        model_file,
    ]
    report.secret_hits, report.scanned = find_secret_key(server_side, private)

    say("decrypting the final model with the private key and evaluating it")
    run_config = dict(report.encrypted.get("run-config", {}))
    report.model_file = model_file
    report.model_bytes = model_file.stat().st_size
    arrays, scaling = statistics.decrypt_model_and_scaling(model_file, private)
    report.final_encrypted = evaluate_with_example(example, arrays, run_config, scaling)
    plain_scaling = statistics.read_plain_scaling(plain_file)
    report.final_plaintext = evaluate_with_example(
        example, _load_npz(plain_file), run_config, plain_scaling
    )
    report.total_s = time.monotonic() - t_start
    (d / "demo.json").write_text(json.dumps(report.to_dict(), indent=2))
    return report
