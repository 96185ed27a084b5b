"""In-process Grid double: every message goes through a real ClientApp over the wire format."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from cifer_flwr.mods import ckks_mod

# a ServerApp process has these set by the SuperLink; the in-process double sets them itself
TaskIdentity.run_id = 1
TaskIdentity.task_id = 1
TaskIdentity.node_id = 0

Tamper = Callable[[int, list[Message]], list[Message]]


def wire(msg: Message) -> Message:
    """What the other side receives: Flower's own protobuf round trip."""
    return message_from_proto(message_to_proto(msg))


class InProcessGrid(Grid):
    def __init__(self, app: ClientApp, node_configs: dict[int, dict], tamper: Tamper | None = None):
        self.app = app
        self.contexts = {
            node: Context(
                run_id=1, node_id=node, node_config=cfg, state=RecordDict(), run_config={}
            )
            for node, cfg in node_configs.items()
        }
        self.tamper = tamper
        self._outbox: list[Message] = []
        self.sent: list[Message] = []
        self.pushed: list[list[Message]] = []  # the messages of each push (call), in order
        self.replies: list[Message] = []
        self.calls = 0
        #: seconds (of the virtual clock, see VirtualClock) between sweeps of the pull loop
        self.pull_interval = 60.0

    def set_run(self, run):  # pragma: no cover - unused
        pass

    @property
    def run(self):  # pragma: no cover - unused
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # pragma: no cover - unused
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages):
        """Deliver each message to its node now; replies wait for pull_messages."""
        self.calls += 1
        messages = list(messages)
        self.pushed.append(messages)
        ids, replies = [], []
        for msg in messages:
            self.sent.append(msg)
            msg_id = f"m{len(self.sent)}"
            msg.metadata.__dict__["_message_id"] = msg_id  # as Flower's grids do on push
            received = wire(msg)
            received.metadata.__dict__["_message_id"] = msg_id  # the SuperLink assigns ids
            reply = wire(self.app(received, self.contexts[msg.metadata.dst_node_id]))
            ids.append(msg_id)
            replies.append(reply)
        if self.tamper is not None:
            replies = self.tamper(self.calls, replies)
        self.replies.extend(replies)
        self._outbox.extend(replies)
        return ids

    def pull_messages(self, message_ids):
        wanted = set(message_ids)
        got = [r for r in self._outbox if r.metadata.reply_to_message_id in wanted]
        self._outbox = [r for r in self._outbox if r not in got]
        return got

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        # Flower's API for the phases the strategies do not stream (evaluate, masking
        # stages): every reply is there at once, a dropped one never comes
        return self.pull_messages(self.push_messages(list(messages)))


class VirtualClock:
    """Stands in for the ``time`` module of the strategies' pull loop.

    The loop is the production one (``cifer_flwr.strategies._pull``); only its clock is
    virtual, so a dropped reply is waited for until the timeout without real sleeping.
    """

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.01)


INITIAL = {
    "w": np.random.default_rng(0).normal(0, 0.3, (20, 10)).astype(np.float32),
    "b": np.linspace(-0.5, 0.5, 10).astype(np.float32),
}


def make_client_app(
    seen: dict,
    *,
    encrypted: bool,
    examples: Callable[[int], int] | None = None,
    shape_bug_node: int | None = None,
) -> ClientApp:
    """A deterministic ClientApp: y = 0.8 x + c_node (+ mu); it records what it receives."""
    app = ClientApp(mods=[ckks_mod] if encrypted else None)
    count = examples or (lambda node: 10 * node)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content["arrays"]
        x = {k: a.numpy() for k, a in arrays.items()}
        node = context.node_id
        mu = float(msg.content["config"].get("proximal-mu", 0.0))
        rnd = int(msg.content["config"]["server-round"])
        seen[("train", rnd, node)] = x
        y = {k: (0.8 * v + 0.05 * node + mu).astype(v.dtype) for k, v in x.items()}
        if shape_bug_node == node:
            y["w"] = y["w"][:5]
        return Message(
            RecordDict(
                {
                    "arrays": ArrayRecord({k: ArrayRecord([v])["0"] for k, v in y.items()}),
                    "metrics": MetricRecord({"num-examples": count(node), "loss": float(node)}),
                }
            ),
            reply_to=msg,
        )

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        x = {k: a.numpy() for k, a in msg.content["arrays"].items()}
        rnd = int(msg.content["config"]["server-round"])
        seen[("evaluate", rnd, context.node_id)] = x
        return Message(
            RecordDict(
                {
                    "metrics": MetricRecord(
                        {"num-examples": count(context.node_id), "mean": float(np.mean(x["w"]))}
                    )
                }
            ),
            reply_to=msg,
        )

    return app


def node_configs(private_key_path, nodes=(1, 2, 3), overrides: dict[int, str] | None = None):
    overrides = overrides or {}
    return {
        n: {"private-key": str(overrides.get(n, private_key_path)), "partition-id": n}
        for n in nodes
    }


def plain_initial() -> ArrayRecord:
    return ArrayRecord({k: ArrayRecord([v])["0"] for k, v in INITIAL.items()})


def run_encrypted(key_files, name, rounds, nodes, common, tamper=None, **kwargs):
    """Run encrypted strategy ``name`` in-process; return (strategy, seen, result)."""
    from cifer_flwr import strategies

    priv, pub = key_files
    seen: dict = {}
    grid = InProcessGrid(make_client_app(seen, encrypted=True), node_configs(priv, nodes=nodes))
    grid.tamper = tamper
    strategy = getattr(strategies, name)(public_key=pub, **common, **kwargs)
    result = strategy.start(grid=grid, initial_arrays=plain_initial(), num_rounds=rounds)
    return strategy, seen, result


def generic_app_grid(exp, private_key) -> InProcessGrid:
    """An in-process Grid of ``exp.federation.nodes`` nodes running the generic ClientApp."""
    from cifer_flwr.experiments.app.client_app import app as client_app
    from cifer_flwr.experiments.config import overrides_to_string

    nodes = exp.federation.nodes
    grid = InProcessGrid(
        client_app,
        {
            n + 1: {"partition-id": n, "num-partitions": nodes, "private-key": str(private_key)}
            for n in range(nodes)
        },
    )
    run_config = {"hydra-overrides": overrides_to_string(exp)}
    for ctx in grid.contexts.values():
        ctx.run_config = run_config
    return grid


def run_generic_app(exp, private_key, public_key, tamper: Tamper | None = None):
    """Run experiment ``exp`` through the generic ServerApp code; (results, grid)."""
    from cifer_flwr.experiments.experiment import run_on_grid

    grid = generic_app_grid(exp, private_key)
    grid.tamper = tamper
    pub = str(public_key) if public_key else None
    return run_on_grid(grid, exp, public_key=pub), grid
