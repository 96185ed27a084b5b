"""Every masking parser, fed mutated real payloads: only ``CiferError``s, never a crash.

Both directions are hostile (docs/design.md §4.9): the server parses advertisements, share
and unmask replies; a key holder parses advertise, share, train and unmask requests.
"""

from __future__ import annotations

import copy
import json
import random

import pytest

from cifer_flwr.exceptions import CiferError
from tests.fuzz.test_fuzz import fuzz

CASES = 150  # per parser, half byte and half JSON mutations (benchmarks: more)


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


@pytest.mark.parametrize("stage", fuzz.MASKING_STAGES)
def test_masking_parsers_refuse_mutations_with_cifer_errors(stage):
    honest = fuzz.masking_payloads()
    rng = random.Random(f"masking-{stage}")
    failures = []
    for case in range(CASES):
        payload = (mutate_bytes if case % 2 else mutate_json)(rng, honest[stage])
        try:  # fresh parties for each input, replayed up to the stage (benchmarks/fuzz.py)
            fuzz.feed_masking(stage, payload)
        except CiferError:
            continue
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc!s:.120}")
    assert not failures, failures[:5]
