"""ClientApp: federated logistic regression with scikit-learn; ``encryption_mod`` adds CKKS.

The SuperNode's node config gives ``partition-id``, ``num-partitions`` and ``private-key``
(the path of the CKKS private key, read by the mod; it never leaves this machine). The node
holds raw rows; before round 1 the federation sums every node's feature statistics under
encryption and each node standardises with the global mean and std (``cifer_stats``).
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from cifer_flwr.apps import encryption_enabled, encryption_mod
from cifer_flwr.scaling import answer_statistics, global_statistics
from sklearnexample import task

app = ClientApp(mods=[encryption_mod])


def _params(msg: Message) -> dict:
    return {name: arr.numpy() for name, arr in msg.content["arrays"].items()}


@app.query("cifer_stats")
def statistics(msg: Message, context: Context) -> Message:
    # this node's encrypted feature sums; then the federation's total, kept in context.state
    data = task.load_data(context.run_config, context.node_config)  # raw rows
    encrypted = encryption_enabled(context.run_config)
    return answer_statistics(msg, context, data.x_train, encrypted=encrypted)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    _, classes = task.dataset_shape(cfg)
    model = task.make_model(cfg)
    task.set_params(model, _params(msg), classes)
    data = task.load_data(cfg, context.node_config, global_statistics(context))
    task.train(model, data.x_train, data.y_train, int(cfg["local-epochs"]), classes)
    loss, _ = task.test(model, data.x_train, data.y_train, classes)
    arrays = ArrayRecord({k: Array(v) for k, v in task.get_params(model).items()})
    metrics = MetricRecord({"train-loss": loss, "num-examples": len(data.y_train)})
    return Message(content=RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    _, classes = task.dataset_shape(cfg)
    model = task.make_model(cfg)
    task.set_params(model, _params(msg), classes)
    data = task.load_data(cfg, context.node_config, global_statistics(context))
    loss, accuracy = task.test(model, data.x_test, data.y_test, classes)
    metrics = MetricRecord({"loss": loss, "accuracy": accuracy, "num-examples": len(data.y_test)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
