"""One experiment on a Flower Grid: the code behind the generic ServerApp and ClientApp."""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context
from flwr.serverapp import Grid

from cifer_flwr.apps.data import Partition, load_dataset, load_file_dataset, load_partition
from cifer_flwr.apps.results import ResultsWriter
from cifer_flwr.exceptions import ConfigError
from cifer_flwr.experiments.config import ExperimentConfig, compose, overrides_to_string
from cifer_flwr.experiments.scaling import scaled_partition
from cifer_flwr.experiments.tasks import TASKS, Task, TrainSettings, get_task
from cifer_flwr.experiments.topology.centralized import run_centralized
from cifer_flwr.experiments.topology.p2p import PeerRuntime, run_p2p
from cifer_flwr.mods import private_key_for
from cifer_flwr.scaling import exchange_statistics, stored_statistics
from cifer_flwr.statistics import FeatureStats, StatisticsError

__all__ = [
    "ClientRuntime",
    "client_runtime",
    "dataset_shape",
    "initial_arrays",
    "run_on_grid",
]

log = logging.getLogger(__name__)

#: Run-config keys of the generic app (``flwr run ... --run-config "..."``); ``resume`` and
#: ``checkpoint-path`` are :data:`cifer_flwr.apps.runconfig.RC_RESUME` / ``RC_CHECKPOINT``.
RC_OVERRIDES = "hydra-overrides"
RC_RESULTS = "results-path"
RC_PUBLIC_KEY = "public-key"
RC_SAVE = "save-path"


@lru_cache(maxsize=8)
def dataset_shape(dataset: str) -> tuple[int, int]:
    """(number of features, number of classes) of a dataset."""
    data = load_dataset(dataset)
    return data.num_features, data.num_classes


def _task(exp: ExperimentConfig) -> Task:
    model, dataset = TASKS[exp.task.name]
    t = exp.task  # your own model file when task.model_path is set
    return get_task(model, dataset, model_path=t.model_path, model_class=t.model_class)


def initial_arrays(exp: ExperimentConfig, seed: int | None = None) -> dict[str, np.ndarray]:
    """The task's initial model for ``exp`` (plaintext; the strategy encrypts it)."""
    features, classes = dataset_shape(exp.task.dataset_path or exp.task.dataset)
    return _task(exp).init_arrays(features, classes, exp.seed if seed is None else seed)


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def run_on_grid(
    grid: Grid,
    exp: ExperimentConfig,
    *,
    public_key: str | None = None,
    save_path: str | None = None,
    timeout: float | None = None,
    checkpoint_path: str | None = None,
    resume: bool = False,
    restored_rows: list[dict[str, Any]] | None = None,
    writer: ResultsWriter | None = None,
) -> dict[str, Any]:
    """Run ``exp`` on a Grid (a real SuperLink or a test double) and return its results.

    The results are the ``cifer.results/1`` document of
    :class:`~cifer_flwr.apps.results.ResultsWriter` (``writer``, or an in-memory one),
    the schema the examples write too; it is rewritten after every round, and one line per
    round goes to Flower's logger. Centralized encrypted runs checkpoint to
    ``checkpoint_path`` after every round and, with ``resume`` (or ``exp.resume``),
    continue from it; ``restored_rows`` (the killed run's rows) are kept for the restored
    rounds.
    """
    limit = exp.federation.timeout if timeout is None else timeout
    resume = resume or exp.resume
    encrypted = exp.encryption.enabled
    centralized = exp.topology.name.value == "centralized"
    writer = writer or ResultsWriter(None)
    writer.update(
        strategy=exp.strategy.name,
        topology=exp.topology.name.value,
        encrypted=encrypted,
        preset=exp.encryption.preset if encrypted else None,
        task=exp.task.name,
        nodes=exp.federation.nodes,
        num_rounds=exp.num_rounds,
        config=overrides_to_string(exp),
        resume=resume,
        checkpoint_path=checkpoint_path if encrypted and centralized else None,
        save_path=save_path if encrypted and centralized else None,
    )
    if not centralized and resume:
        raise ConfigError("resume=true needs topology=centralized (p2p has no checkpoint).")
    if exp.task.dataset_path:  # raw rows: the federation's scaling first (design §4.10)
        exchange_statistics(
            grid,
            num_features=dataset_shape(exp.task.dataset_path)[0],
            public_key=public_key if encrypted else None,
            min_nodes=exp.federation.nodes,
            timeout=limit,
            save_path=save_path if encrypted and centralized else None,
        )
    if not centralized:
        writer.start()
        rounds = run_p2p(
            grid,
            num_peers=exp.federation.nodes,
            num_rounds=exp.num_rounds,
            graph=exp.topology.graph.value,
            degree=exp.topology.degree,
            mixing=exp.topology.mixing.value,
            seed=exp.seed,
            timeout=limit,
            on_round=writer.round_completed,
        )
        return writer.write("ok", rounds)
    rounds, after = run_centralized(
        grid,
        exp,
        _record(initial_arrays(exp)),
        public_key=public_key if encrypted else None,
        writer=writer,
        save_path=save_path if encrypted else None,
        timeout=limit,
        checkpoint_path=checkpoint_path if encrypted else None,
        resume=resume,
        restored_rows=(restored_rows or []) if resume else [],
    )
    return writer.write("ok", rounds, resumed_after=after)


class ClientRuntime:
    """Per-node state of the generic ClientApp: config, data, task and key (loaded once)."""

    def __init__(self, exp: ExperimentConfig, context: Context) -> None:
        self.exp = exp
        node_config = context.node_config
        try:
            pid = int(node_config["partition-id"])
            num = int(node_config.get("num-partitions", exp.federation.nodes))
        except KeyError:
            raise ConfigError(
                'the SuperNode needs --node-config "partition-id=I num-partitions=N"'
            ) from None
        self.partition_id = pid
        path = exp.task.dataset_path
        #: A dataset file's rows stay raw here; they are scaled with the federation's
        #: statistics (docs/design.md §4.10), a built-in dataset comes standardized.
        self.federated_scaling = bool(path)
        dataset = (
            load_file_dataset(path, seed=exp.seed, standardize=False)
            if path
            else load_dataset(exp.task.dataset, seed=exp.seed)
        )
        self.raw: Partition = load_partition(
            dataset,
            pid,
            num,
            partitioner=exp.partitioning.partitioner.value,
            alpha=exp.partitioning.alpha,
            seed=exp.seed,
        )
        self._data: Partition | None = None if self.federated_scaling else self.raw
        self._stats: FeatureStats | None = None
        self.task = _task(exp)
        # the one key loader (cached per path), shared with ckks_mod
        self.key = private_key_for(context) if exp.encryption.enabled else None

    @property
    def data(self) -> Partition:
        """The node's partition as the model sees it (scaled with the federation's stats).

        Raises
        ------
        StatisticsError
            With a dataset file, before this node took part in the statistics round.

        """
        if self._data is None:
            raise StatisticsError(
                "this node has no federated feature statistics for the run (it was not "
                "connected for the statistics round); it cannot scale its rows."
            )
        return self._data

    def rescale(self, context: Context) -> None:
        """Scale the raw rows with the statistics kept in ``context.state`` (dataset files)."""
        stats = stored_statistics(context) if self.federated_scaling else None
        if stats is None or (
            self._stats is not None
            and self._stats.count == stats.count
            and np.array_equal(self._stats.mean, stats.mean)
            and np.array_equal(self._stats.std, stats.std)
        ):
            return
        self._stats = stats
        self._data = scaled_partition(self.raw, context)

    def settings(self, server_round: int, proximal_mu: float = 0.0) -> TrainSettings:
        """Local training settings for one round (deterministic per node and round)."""
        t = self.exp.task
        return TrainSettings(
            epochs=t.epochs,
            learning_rate=t.learning_rate,
            batch_size=t.batch_size,
            proximal_mu=proximal_mu,
            seed=self.exp.seed * 100_003 + self.partition_id * 1009 + server_round,
        )

    def peer(self, server_round: int) -> PeerRuntime:
        """What the p2p handlers need; each peer starts from its own random model."""
        return PeerRuntime(
            self.task,
            self.data,
            self.settings(server_round),
            self.key,
            lambda: initial_arrays(self.exp, seed=self.exp.seed + 1 + self.partition_id),
        )


_RUNTIMES: dict[tuple[int, int, str], ClientRuntime] = {}


def client_runtime(context: Context) -> ClientRuntime:
    """The :class:`ClientRuntime` of this run and node (built on first use)."""
    overrides = str(context.run_config.get(RC_OVERRIDES, ""))
    key = (context.run_id, context.node_id, overrides)
    if key not in _RUNTIMES:
        _RUNTIMES[key] = ClientRuntime(_composed(overrides), context)
    _RUNTIMES[key].rescale(context)
    return _RUNTIMES[key]


@lru_cache(maxsize=8)
def _composed(overrides: str) -> ExperimentConfig:
    """:func:`compose` once per process: a simulation worker hosts many virtual nodes."""
    return compose(overrides)
