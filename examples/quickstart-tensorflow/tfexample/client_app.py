"""ClientApp: an ordinary Flower Keras client; ``encryption_mod`` adds CKKS around it.

The SuperNode's node config gives ``partition-id``, ``num-partitions`` and ``private-key``
(the path of the CKKS private key, read by the mod; it never leaves this machine).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from cifer_flwr.experiments.apps import encryption_mod
from tfexample import task

app = ClientApp(mods=[encryption_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    model = task.make_model(cfg)
    task.set_weights(model, msg.content["arrays"].to_numpy_ndarrays())
    data = task.load_data(cfg, context.node_config)
    server_round = int(msg.content["config"].get("server-round", 0))
    partition = int(context.node_config.get("partition-id", 0))
    task.set_seed(int(cfg["seed"]) * 10_000 + server_round * 100 + partition)
    history = model.fit(
        data.x_train,
        data.y_train,
        epochs=int(cfg["local-epochs"]),
        batch_size=int(cfg["batch-size"]),
        verbose=0,
    )
    metrics = MetricRecord(
        {"train-loss": float(history.history["loss"][-1]), "num-examples": len(data.y_train)}
    )
    content = RecordDict({"arrays": ArrayRecord(model.get_weights()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    model = task.make_model(cfg)
    task.set_weights(model, msg.content["arrays"].to_numpy_ndarrays())
    data = task.load_data(cfg, context.node_config)
    loss, accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)
    metrics = MetricRecord(
        {"loss": float(loss), "accuracy": float(accuracy), "num-examples": len(data.y_test)}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
