"""ReplyScreen walks each reply's packs once (issue 20, item 1).

``screen`` frames the record (crypto.frame_record: structure, pack framing, views into the
packs) and hashes those views for the replay memory; ``parse`` builds the parts from the
same framing, which it then drops on every path: at most one reply's framing is held.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from cifer_flwr import crypto
from cifer_flwr.constants import PART_MODEL, REPLY_RECORD
from cifer_flwr.crypto import ckks, records
from cifer_flwr.exceptions import CiphertextFormatError
from cifer_flwr.strategies._replies import REPLY_CONFIG_BYTES, ReplyError
from cifer_flwr.strategies._screen import ReplyScreen
from tests.strategies import harness  # noqa: F401  (sets Flower's TaskIdentity)

MODEL = {"w": np.linspace(-1, 1, 5000).astype(np.float32)}  # 3 ciphertexts of 2048 slots
DIVISOR = 40.0
EXAMPLES = 10


def _screen(public_key: crypto.Key, key: crypto.Key) -> ReplyScreen:
    screen = ReplyScreen(public_key, "arrays", "num-examples", {REPLY_RECORD: REPLY_CONFIG_BYTES})
    glob = crypto.encrypt(MODEL, key)
    screen.set_layout(glob.layout)
    screen.open_round(1, crypto.to_array_record(glob))
    return screen


def _reply(screen: ReplyScreen, key: crypto.Key, node: int, examples: int = EXAMPLES) -> Message:
    """A node's reply (one ciphertext per pack); the node is marked as sampled."""
    request = Message(RecordDict(), dst_node_id=node, message_type="train")
    screen.sent(node, node, {}, request)
    enc = crypto.encrypt(MODEL, key, weight=examples / DIVISOR)
    content = RecordDict(
        {
            "arrays": crypto.bundle_to_record({PART_MODEL: enc}, pack_bytes=1),
            "metrics": MetricRecord({"num-examples": examples}),
        }
    )
    return Message(content, reply_to=request)


@pytest.fixture
def walks(monkeypatch):
    """Packs framed and ciphertexts deserialized, counted."""
    seen = {"packs": 0, "loads": 0}
    unpack, load = records.unpack_ciphertexts, ckks.load_chunk

    def counting_unpack(*args, **kwargs):
        seen["packs"] += 1
        return unpack(*args, **kwargs)

    def counting_load(*args, **kwargs):
        seen["loads"] += 1
        return load(*args, **kwargs)

    monkeypatch.setattr(records, "unpack_ciphertexts", counting_unpack)
    monkeypatch.setattr(ckks, "load_chunk", counting_load)
    return seen


@pytest.fixture
def framings(monkeypatch):
    """A weak reference to every FramedRecord the screen makes."""
    made: list[weakref.ref] = []
    frame = crypto.frame_record

    def spy(record, key):
        framed = frame(record, key)
        made.append(weakref.ref(framed))
        return framed

    monkeypatch.setattr(crypto, "frame_record", spy)
    return made


def _alive(made: list[weakref.ref]) -> list[bool]:
    gc.collect()
    return [ref() is not None for ref in made]


def test_screen_then_parse_walks_each_pack_once(key, public_key, walks):
    screen = _screen(public_key, key)
    msg = _reply(screen, key, node=1)
    packs = sum(".ct." in name for name in msg.content["arrays"])
    assert packs == 3
    walks["packs"] = 0
    screen.screen(msg, 1)
    assert walks == {"packs": packs, "loads": 0}  # hashed, nothing deserialized
    parts = screen.parse(msg, DIVISOR)
    assert walks == {"packs": packs, "loads": packs}  # parsed without a second walk
    got = crypto.decrypt(parts[PART_MODEL], key, divisor=EXAMPLES / DIVISOR)
    np.testing.assert_allclose(got["w"], MODEL["w"], atol=1e-5)


def test_a_replay_is_refused_before_anything_is_deserialized(key, public_key, walks):
    screen = _screen(public_key, key)
    first = _reply(screen, key, node=1)
    screen.screen(first, 1)
    screen.parse(first, DIVISOR)
    copy = _reply(screen, key, node=2)
    copy.content["arrays"] = first.content["arrays"]
    loads = walks["loads"]
    with pytest.raises(ReplyError, match="node 1's reply in round 1"):
        screen.screen(copy, 1)
    assert walks["loads"] == loads


def test_the_framing_is_dropped_after_parse_on_every_path(key, public_key, framings):
    screen = _screen(public_key, key)
    ok = _reply(screen, key, node=1)
    screen.screen(ok, 1)
    assert _alive(framings) == [True]
    screen.parse(ok, DIVISOR)
    assert _alive(framings) == [False]
    # a parse that refuses the reply (its weight does not match its example count)
    wrong = _reply(screen, key, node=2, examples=EXAMPLES + 1)
    wrong.content["metrics"]["num-examples"] = EXAMPLES
    screen.screen(wrong, 1)
    with pytest.raises(ReplyError, match="weighted") as refused:
        screen.parse(wrong, DIVISOR)
    del refused  # its traceback holds parse's frame
    assert _alive(framings) == [False, False]
    # a reply the screen refuses after framing it (a replay) is not kept
    replay = _reply(screen, key, node=3)
    replay.content["arrays"] = ok.content["arrays"]
    with pytest.raises(ReplyError, match="duplicate") as refused:
        screen.screen(replay, 1)
    del refused
    assert _alive(framings) == [False, False, False]


def test_at_most_one_reply_is_held_whatever_the_cohort(key, public_key, framings):
    screen = _screen(public_key, key)
    replies = [_reply(screen, key, node) for node in range(1, 5)]
    for msg in replies:  # screened, never parsed (e.g. a caller that failed in between)
        screen.screen(msg, 1)
    assert _alive(framings) == [False, False, False, True]
    screen.open_round(2, crypto.to_array_record(crypto.encrypt(MODEL, key)))
    assert _alive(framings) == [False] * 4


def test_parse_frames_a_record_the_screen_did_not_pass(key, public_key, framings, walks):
    screen = _screen(public_key, key)
    screened, other = _reply(screen, key, node=1), _reply(screen, key, node=2)
    screen.screen(screened, 1)
    walks["packs"] = 0
    parts = screen.parse(other, DIVISOR)  # not the screened record: framed anew
    assert walks["packs"] == 3 and len(framings) == 2
    assert _alive(framings) == [False, False]
    assert parts[PART_MODEL].layout == screen.require_layout()


def test_a_swapped_record_is_not_parsed_from_the_screened_framing(key, public_key, framings):
    screen = _screen(public_key, key)
    msg = _reply(screen, key, node=1)
    screen.screen(msg, 1)
    heavier = _reply(screen, key, node=2, examples=EXAMPLES + 1)
    msg.content["arrays"] = heavier.content["arrays"]  # after the replay check
    with pytest.raises(ReplyError, match="weighted"):
        screen.parse(msg, DIVISOR)  # the new record was framed and parsed, not the old one
    assert len(framings) == 2


def test_a_reply_with_bad_framing_is_refused_by_the_screen(key, public_key, walks):
    screen = _screen(public_key, key)
    msg = _reply(screen, key, node=1)
    record = msg.content["arrays"]
    items = dict(record.items())
    arr = items["cifer.model.ct.000001"]
    items["cifer.model.ct.000001"] = type(arr)(
        dtype=arr.dtype, shape=arr.shape, stype=arr.stype, data=arr.data + b"\x00"
    )
    msg.content["arrays"] = ArrayRecord(items)
    with pytest.raises(CiphertextFormatError, match="trailing"):
        screen.screen(msg, 1)
    assert walks["loads"] == 0
