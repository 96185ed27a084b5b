"""Every masking parser, fed mutated real payloads: only ``CiferError``s, never a crash.

Both directions are hostile (docs/design.md §4.9): the server parses advertisements, share
and unmask replies; a key holder parses advertise, share, train and unmask requests.
"""

from __future__ import annotations

import copy
import json
import random

import pytest

from cifer_flwr import masking
from cifer_flwr.exceptions import CiferError

T = 1073692673
CASES = 150  # per parser, half byte and half JSON mutations (benchmarks: more)


def honest_round():
    """Payloads of one honest 4-client round, captured at every stage."""
    server = masking.ServerSession(1)
    clients, payloads = {}, {"advertise": server.advertise_request()}
    for node in (1, 2, 3, 4):
        clients[node], reply = masking.ClientSession.advertise(payloads["advertise"], node, None, 0)
        payloads.setdefault("advertised", reply)
        server.accept_advert(node, reply)
    payloads["share"] = server.share_request()
    for node, client in clients.items():
        reply = client.share(payloads["share"], None)
        payloads.setdefault("shared", reply)
        server.accept_shares(node, reply)
    server.fix_cohort()
    payloads["train"] = server.train_payload(1)
    for node, client in clients.items():
        client.mask(server.train_payload(node), 8, T)
    payloads["unmask"], alive, _ = server.unmask_request([1, 2, 3, 4])
    payloads["unmasked"] = clients[2].unmask(payloads["unmask"])
    return payloads


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0 and data:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:
        data = data[: rng.randrange(len(data) + 1)]
    elif kind == 2:
        at = rng.randrange(len(data) + 1)
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    else:
        data += b"9" * rng.choice([1, 1000, 70_000])
    return bytes(data)


HOSTILE = [None, True, -1, 2**64, 2**200, 1e308, float("nan"), "", "x" * 5000, [], {}, [1, 1]]


def mutate_json(rng: random.Random, data: bytes) -> bytes:
    obj = json.loads(data)
    target = obj
    path = []
    while isinstance(target, dict | list) and target and rng.random() < 0.7:
        key = rng.choice(list(target)) if isinstance(target, dict) else rng.randrange(len(target))
        path.append((target, key))
        target = target[key]
    if not path:
        return json.dumps(rng.choice(HOSTILE)).encode()
    parent, key = path[-1]
    parent[key] = copy.deepcopy(rng.choice([*HOSTILE, obj.get("session"), {"1": "AA=="}]))
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    "stage", ["advertise", "advertised", "share", "shared", "train", "unmask", "unmasked"]
)
def test_masking_parsers_refuse_mutations_with_cifer_errors(stage):
    honest = honest_round()
    rng = random.Random(f"masking-{stage}")
    failures = []
    for case in range(CASES):
        payload = (mutate_bytes if case % 2 else mutate_json)(rng, honest[stage])
        # fresh parties for each input (a refusal may have moved a session to another stage)
        server = masking.ServerSession(1)
        try:
            if stage == "advertise":
                masking.ClientSession.advertise(payload, 9, None, 0)
            elif stage == "advertised":
                server.accept_advert(1, payload)
            elif stage in ("share", "train", "unmask", "shared", "unmasked"):
                _feed_later_stage(stage, payload)
        except CiferError:
            continue
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc!s:.120}")
    assert not failures, failures[:5]


def _feed_later_stage(stage: str, payload: bytes) -> None:
    """Replay an honest round up to ``stage`` and feed ``payload`` to that stage's parser."""
    server = masking.ServerSession(1)
    # the payload's own session must match the parties' for the later checks to be reached
    try:
        session = json.loads(payload).get("session")
        server.session = masking._unb64(session, "session", 16) if session else server.session
    except (ValueError, AttributeError, CiferError):
        pass
    clients = {}
    for node in (1, 2, 3, 4):
        clients[node], reply = masking.ClientSession.advertise(
            server.advertise_request(), node, None, 0
        )
        server.accept_advert(node, reply)
    if stage == "share":
        clients[1].share(payload, None)
        return
    request = server.share_request()
    for node, client in clients.items():
        if stage == "shared" and node == 1:
            server.accept_shares(1, payload)
        else:
            server.accept_shares(node, client.share(request, None))
    if stage == "shared":
        return
    server.fix_cohort()
    if stage == "train":
        clients[1].mask(payload, 8, T)
        return
    for node, client in clients.items():
        client.mask(server.train_payload(node), 8, T)
    if stage == "unmask":
        clients[1].unmask(payload)
        return
    server.accept_unmask(2, payload, [1, 2, 3, 4])
    server.residual([1, 2, 3, 4], 8, T)
