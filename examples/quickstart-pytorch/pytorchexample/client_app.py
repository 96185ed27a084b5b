"""ClientApp: an ordinary Flower PyTorch client; ``encryption_mod`` adds CKKS around it.

The SuperNode's node config gives ``partition-id``, ``num-partitions`` and ``private-key``
(the path of the CKKS private key, read by the mod; it never leaves this machine). The node
holds raw rows; before round 1 the federation sums every node's feature statistics under
encryption and each node standardises with the global mean and std (``cifer_stats``).
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from cifer_flwr.apps import encryption_enabled, encryption_mod
from cifer_flwr.scaling import answer_statistics, global_statistics
from pytorchexample import task

torch.set_num_threads(1)

# encryption_mod = cifer_flwr.mods.ckks_mod, switched off when run config encryption=false
app = ClientApp(mods=[encryption_mod])


@app.query("cifer_stats")
def statistics(msg: Message, context: Context) -> Message:
    # this node's encrypted feature sums; then the federation's total, kept in context.state
    data = task.load_data(context.run_config, context.node_config)  # raw rows
    encrypted = encryption_enabled(context.run_config)
    return answer_statistics(msg, context, data.x_train, encrypted=encrypted)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    model = task.make_model(cfg)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    data = task.load_data(cfg, context.node_config, global_statistics(context))
    config = msg.content["config"]
    server_round = int(config.get("server-round", 0))
    partition = int(context.node_config.get("partition-id", 0))
    loss = task.train(
        model,
        data.x_train,
        data.y_train,
        epochs=int(cfg["local-epochs"]),
        lr=float(cfg["lr"]),
        batch_size=int(cfg["batch-size"]),
        seed=int(cfg["seed"]) * 10_000 + server_round * 100 + partition,
        proximal_mu=float(config.get("proximal-mu", 0.0)),
    )
    metrics = MetricRecord({"train-loss": loss, "num-examples": len(data.y_train)})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    model = task.make_model(cfg)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    data = task.load_data(cfg, context.node_config, global_statistics(context))
    loss, accuracy = task.test(model, data.x_test, data.y_test)
    metrics = MetricRecord({"loss": loss, "accuracy": accuracy, "num-examples": len(data.y_test)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
