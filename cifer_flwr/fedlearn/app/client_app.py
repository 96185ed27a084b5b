"""ClientApp of the fedlearn API: this SuperNode's own data and model, CKKS through the mod.

Node config (set by :class:`cifer_flwr.fedlearn.CiferClient`): ``dataset-path`` (this
client's dataset file, used whole; its raw rows are scaled with the federation's statistics,
docs/design.md §4.10), ``model-path`` and ``model-class`` (the model it trains),
``private-key`` (read by ``ckks_mod``; it never leaves this machine).
"""

from __future__ import annotations

from typing import Any, cast

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from cifer_flwr.apps.data import Partition, load_file_dataset, whole
from cifer_flwr.apps.runconfig import encryption_enabled, encryption_mod
from cifer_flwr.exceptions import ConfigError
from cifer_flwr.experiments.scaling import scaled_partition
from cifer_flwr.experiments.tasks import Task, TrainSettings, get_task
from cifer_flwr.scaling import answer_statistics

app = ClientApp(mods=[encryption_mod])

_RUNTIMES: dict[tuple[int, int], tuple[Task, Partition]] = {}


def _runtime(context: Context) -> tuple[Task, Partition]:
    key = (context.run_id, context.node_id)
    if key not in _RUNTIMES:
        nc = context.node_config
        data_path, model_path = nc.get("dataset-path"), nc.get("model-path")
        if not data_path or not model_path:
            raise ConfigError(
                "this SuperNode has no dataset-path / model-path in its node config; start it "
                "with cifer_flwr.fedlearn.CiferClient (dataset_path, model_path)."
            )
        task = get_task(
            "",
            str(data_path),
            model_path=str(model_path),
            model_class=str(nc.get("model-class", "")),
        )
        seed = int(cast(int, context.run_config.get("seed", 0)))
        # raw rows: scaled with the federation's statistics (docs/design.md §4.10)
        raw = whole(load_file_dataset(str(data_path), seed=seed, standardize=False))
        _RUNTIMES[key] = (task, raw)
    return _RUNTIMES[key]


def _scaled(context: Context) -> tuple[Task, Partition]:
    task, raw = _runtime(context)
    return task, scaled_partition(raw, context)


@app.query("cifer_stats")
def statistics(msg: Message, context: Context) -> Message:
    """The federated feature-statistics round: encrypted sums, then the total to keep."""
    _, raw = _runtime(context)
    return answer_statistics(
        msg, context, raw.x_train, encrypted=encryption_enabled(context.run_config)
    )


def _arrays(msg: Message) -> dict[str, Any]:
    return {k: a.numpy() for k, a in msg.content.array_records["arrays"].items()}


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train this client's model on its own data from the received (decrypted) model."""
    task, data = _scaled(context)
    config: ConfigRecord = msg.content.config_records.get("config") or ConfigRecord()
    server_round = int(cast(int, config.get("server-round", 0)))
    settings = TrainSettings(
        epochs=int(cast(int, config.get("local-epochs", 1))),
        learning_rate=float(cast(float, config.get("learning-rate", 0.1))),
        batch_size=int(cast(int, config.get("batch-size", 32))),
        proximal_mu=float(cast(float, config.get("proximal-mu", 0.0))),
        seed=int(cast(int, config.get("seed", 0))) * 100_003
        + context.node_id % 10_007
        + server_round,
    )
    trained, loss = task.train(_arrays(msg), data, settings)
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in trained.items()}),
            "metrics": MetricRecord({"num-examples": len(data.y_train), "train-loss": loss}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received (decrypted) model on this client's test split."""
    task, data = _scaled(context)
    loss, acc = task.evaluate(_arrays(msg), data)
    metrics = MetricRecord({"num-examples": len(data.y_test), "loss": loss, "accuracy": acc})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
