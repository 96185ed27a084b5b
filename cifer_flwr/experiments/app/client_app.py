"""Generic ClientApp: trains the configured task; encrypted through ``ckks_mod`` when asked."""

from __future__ import annotations

from typing import cast

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from cifer_flwr.apps.runconfig import switched_ckks_mod
from cifer_flwr.experiments.experiment import client_runtime
from cifer_flwr.experiments.topology.p2p import p2p_evaluate, p2p_train
from cifer_flwr.scaling import answer_statistics

#: The examples' client mod (``ckks_mod``, p2p messages passed through), switched by the
#: Hydra config's ``encryption`` instead of run config ``encryption``.
encryption_mod = switched_ckks_mod(lambda context: client_runtime(context).exp.encryption.enabled)


app = ClientApp(mods=[encryption_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the task from the received (already decrypted) model."""
    rt = client_runtime(context)
    config: ConfigRecord = msg.content.config_records.get("config") or ConfigRecord()
    arrays = {k: a.numpy() for k, a in msg.content.array_records["arrays"].items()}
    server_round = int(cast(int, config.get("server-round", 0)))
    mu = float(cast(float, config.get("proximal-mu", 0.0)))
    settings = rt.settings(server_round, mu)
    trained, loss = rt.task.train(arrays, rt.data, settings)
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in trained.items()}),
            "metrics": MetricRecord({"num-examples": len(rt.data.y_train), "train-loss": loss}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received (already decrypted) model on the local test split."""
    rt = client_runtime(context)
    arrays = {k: a.numpy() for k, a in msg.content.array_records["arrays"].items()}
    loss, acc = rt.task.evaluate(arrays, rt.data)
    metrics = MetricRecord({"num-examples": len(rt.data.y_test), "loss": loss, "accuracy": acc})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


@app.query("cifer_stats")
def statistics(msg: Message, context: Context) -> Message:
    """The federated feature-statistics round (docs/design.md §4.10): sums, then the total."""
    rt = client_runtime(context)
    return answer_statistics(msg, context, rt.raw.x_train, encrypted=rt.exp.encryption.enabled)


@app.train("p2p")
def train_p2p(msg: Message, context: Context) -> Message:
    """Peer-to-peer round: mix neighbours' models, train, keep the model locally."""
    config = msg.content.config_records["config"]
    server_round = int(cast(int, config["server-round"]))
    return p2p_train(msg, context, client_runtime(context).peer(server_round))


@app.evaluate("p2p")
def evaluate_p2p(msg: Message, context: Context) -> Message:
    """Peer-to-peer evaluation of this peer's own model."""
    return p2p_evaluate(msg, context, client_runtime(context).peer(0))
