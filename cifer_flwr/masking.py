"""Secure aggregation inside the exact ``packed`` sums: pairwise + self masks, dropout recovery.

The protocol of docs/design.md §4.9, as pure steps shared by the server (which only relays
and, after the unmask stage, removes the residual mask from the encrypted sum) and the key
holders (which advertise, share, mask and unmask). No tenseal here: masks are integers mod
the plain modulus ``t``, added to the quantized update before encryption
(:func:`cifer_flwr.crypto.encrypt` with ``mask=``).

Round ``r`` of a cohort, every message relayed by the server:

1. *advertise*: each client makes two fresh X25519 pairs (``c`` for the share channel, ``s``
   for the pairwise masks) and returns them, signed with its Ed25519 identity when it has one.
2. *share*: the server sends every advertisement to every advertiser ``U1``; each client
   checks them (roster signatures, its own advertisement unchanged, distinct nodes and
   identities), derives the neighbour graph from the hash of all advertised keys, draws its
   self-mask seed ``b`` and sends Shamir shares of ``b`` and of its ``s`` private key to each
   holder (its neighbours and itself), sealed with AES-GCM under the pair's channel key.
3. *train*: the clients that shared, ``U2``, receive the shares addressed to them with the
   train message; each masks its quantized update with ``PRG(b) + sum_j ±PRG(s_ij)`` over its
   neighbours in ``U2``.
4. *unmask*: after the server has decided which replies it keeps (``U3``; the others count as
   dropped, ``D = U2 - U3``), each survivor reveals its share of ``b_j`` for ``j`` in ``U3`` and
   of ``s_j`` for ``j`` in ``D`` — never both kinds for one node, and only once per round.
   The server rebuilds the residual mask and subtracts it from the encrypted sum.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cifer_flwr.crypto import masks
from cifer_flwr.crypto.container import write_file_atomic
from cifer_flwr.exceptions import KeyExistsError, KeyFileError, MaskingError

__all__ = [
    "COMPLETE_GRAPH_MAX",
    "MAX_COHORT",
    "Advert",
    "ClientSession",
    "Identity",
    "Roster",
    "ServerSession",
    "degree",
    "grouped_graph",
    "holders_of",
    "load_identity",
    "load_roster",
    "neighbour_graph",
    "request_stage",
    "threshold",
    "write_identity",
    "write_roster",
]

_V = 1
_PREFIX = b"cifer-mask/v1|"
#: Cohorts up to this size use the complete graph; larger ones a k-regular graph (§4.9).
COMPLETE_GRAPH_MAX = 50
#: Largest cohort the masking protocol accepts (the ``packed`` preset's ``max_summands``).
MAX_COHORT = 1000
_SEED_BYTES = 16
_IDENTITY_KIND = "cifer.identity/1"
_IDENTITY_PUBLIC_KIND = "cifer.identity-public/1"
_ROSTER_KIND = "cifer.roster/1"
_MAX_FILE = 1 << 20
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


# ------------------------------------------------------------------ public rules
def degree(cohort: int) -> int:
    """Neighbours per client in a cohort of ``cohort`` clients.

    ``cohort - 1`` up to :data:`COMPLETE_GRAPH_MAX`, else ``k = 2 * ceil(1.5 * log2(cohort))``
    (a circulant graph over a random order, as SecAgg+: 20 at 100 clients, 30 at 1000).
    """
    if cohort <= COMPLETE_GRAPH_MAX:
        return max(0, cohort - 1)
    return min(cohort - 1, 2 * math.ceil(1.5 * math.log2(cohort)))


def threshold(holders: int) -> int:
    """Shares needed to rebuild a secret held by ``holders`` clients: ``floor(2h/3) + 1``.

    More than two thirds, so that a server that tells two disjoint groups of honest holders
    different survivor lists can never collect ``threshold`` shares of both kinds for one
    node unless it has ``2t - h`` colluding holders (docs/design.md §4.9).
    """
    return (2 * holders) // 3 + 1


def graph_seed(session: bytes, server_round: int, adverts: Iterable[Advert]) -> bytes:
    """Public randomness of the neighbour graph: SHA-256 over every advertised key.

    Honest clients pick their keys after the server fixed ``session``, so the server can
    only influence the graph by leaving advertisers out.
    """
    h = hashlib.sha256(_PREFIX + b"graph|" + session + _int(server_round))
    for ad in sorted(adverts, key=lambda a: a.node):
        h.update(_int(ad.node) + ad.c_public + ad.s_public)
    return h.digest()


def neighbour_graph(nodes: Sequence[int], seed: bytes) -> dict[int, tuple[int, ...]]:
    """Each node's neighbours, from the public ``seed``.

    Complete up to :data:`COMPLETE_GRAPH_MAX` nodes, otherwise the ``degree`` nearest nodes
    (half on each side) on a ring ordered by ``SHA-256(seed|node)``.
    """
    ordered = sorted(set(nodes))
    k = degree(len(ordered))
    if k == len(ordered) - 1:
        return {n: tuple(m for m in ordered if m != n) for n in ordered}
    ring = sorted(ordered, key=lambda n: hashlib.sha256(seed + _int(n)).digest())
    size, half = len(ring), k // 2
    graph: dict[int, tuple[int, ...]] = {}
    for pos, node in enumerate(ring):
        near = {ring[(pos + d) % size] for d in range(1, half + 1)}
        near |= {ring[(pos - d) % size] for d in range(1, half + 1)}
        graph[node] = tuple(sorted(near))
    return graph


def grouped_graph(groups: Sequence[Sequence[int]], seed: bytes) -> dict[int, tuple[int, ...]]:
    """The neighbour graph of a partition: edges only inside each group (SecureFed, §4.9).

    Each group's sum can then be unmasked on its own, so SecureFed's candidate groups stay
    releasable under masking.
    """
    graph: dict[int, tuple[int, ...]] = {}
    for group in groups:
        graph.update(neighbour_graph(group, seed + _int(min(group))))
    return graph


def _partition(value: object, nodes: Sequence[int], floor: int) -> tuple[tuple[int, ...], ...]:
    """Check a partition of ``nodes`` sent by the server: every node once, groups >= floor."""
    if value is None:
        return (tuple(sorted(nodes)),)
    if not isinstance(value, list) or not value or len(value) > MAX_COHORT:
        raise MaskingError("the masking groups must be a non-empty list of node lists.")
    groups = tuple(tuple(_nodes(g, "a masking group")) for g in value)
    flat = [n for g in groups for n in g]
    if sorted(flat) != sorted(nodes):
        raise MaskingError("the masking groups must hold every advertised node exactly once.")
    if min(len(g) for g in groups) < floor:
        raise MaskingError(
            f"a masking group of {min(len(g) for g in groups)} clients is below the minimum "
            f"of {floor}; its sum would expose too few clients."
        )
    return groups


def holders_of(graph: Mapping[int, Sequence[int]], node: int) -> tuple[int, ...]:
    """The clients that hold shares of ``node``'s secrets: its neighbours and itself."""
    return tuple(sorted({*graph[node], node}))


# ------------------------------------------------------------------ encodings
def _int(value: int) -> bytes:
    """Fixed-width encoding of a node id or round: Flower node ids are unsigned 64-bit."""
    return int(value).to_bytes(9, "big", signed=True)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, what: str, size: int | None = None, *, most: int = 4096) -> bytes:
    if not isinstance(value, str) or len(value) > 2 * most:
        raise MaskingError(f"{what} must be a base64 string, got {type(value).__name__}.")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise MaskingError(f"{what} is not valid base64.") from exc
    if size is not None and len(raw) != size:
        raise MaskingError(f"{what} must be {size} bytes, got {len(raw)}.")
    if len(raw) > most:
        raise MaskingError(f"{what} has {len(raw)} bytes, more than {most}.")
    return raw


def _node_id(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**64:
        raise MaskingError(f"{what} must be a node id (integer), got {value!r:.40}.")
    return value


def _nodes(value: object, what: str) -> list[int]:
    if not isinstance(value, list) or len(value) > MAX_COHORT:
        raise MaskingError(f"{what} must be a list of at most {MAX_COHORT} node ids.")
    nodes = [_node_id(v, what) for v in value]
    if len(set(nodes)) != len(nodes):
        raise MaskingError(f"{what} lists a node twice.")
    return sorted(nodes)


def _max_payload(cohort: int) -> int:
    return 16_384 + 600 * max(1, cohort)


def dumps(payload: Mapping[str, Any]) -> bytes:
    """Canonical JSON bytes of a masking payload. Inverse: :func:`loads`."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


_REQUESTS = ("advertise", "share", "train", "unmask")


def request_stage(data: bytes) -> str:
    """The stage a server's masking request asks for (the payload is parsed again by it)."""
    try:
        obj = json.loads(data[: _max_payload(MAX_COHORT)].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MaskingError(f"a masking request is not JSON: {exc!s:.80}") from exc
    stage = obj.get("stage") if isinstance(obj, dict) else None
    if stage not in _REQUESTS:
        raise MaskingError(f"unknown masking stage {stage!r:.40}; expected one of {_REQUESTS}.")
    return str(stage)


def loads(data: object, stage: str, *, cohort: int = MAX_COHORT) -> dict[str, Any]:
    """Parse a masking payload of ``stage``: bounded bytes, a JSON object, version 1."""
    if not isinstance(data, bytes):
        raise MaskingError(f"a {stage} payload must be bytes, got {type(data).__name__}.")
    if len(data) > _max_payload(cohort):
        raise MaskingError(
            f"a {stage} payload of {len(data)} bytes exceeds the {_max_payload(cohort)} bytes "
            f"a cohort of {cohort} needs."
        )
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MaskingError(f"a {stage} payload is not JSON: {exc!s:.80}") from exc
    if not isinstance(obj, dict) or obj.get("v") != _V or obj.get("stage") != stage:
        raise MaskingError(
            f"expected a version-{_V} {stage!r} payload, got stage "
            f"{obj.get('stage') if isinstance(obj, dict) else type(obj).__name__!r:.40}."
        )
    return obj


# ------------------------------------------------------------------ identities and rosters
def _check_name(name: str) -> str:
    if not name or len(name) > 64 or not set(name) <= _NAME_CHARS or name.startswith("."):
        raise MaskingError(
            f"identity name {name!r:.80} must be 1-64 letters, digits, '.', '_' or '-' "
            "(not starting with '.')."
        )
    return name


@dataclass(frozen=True)
class Identity:
    """A key holder's Ed25519 identity: signs its masking advertisements."""

    name: str
    private: bytes = field(repr=False)

    @property
    def public(self) -> bytes:
        """The raw Ed25519 public key."""
        return masks.identity_public(self.private)


@dataclass(frozen=True)
class Roster:
    """The identities every client accepts, distributed out of band with the HE key.

    ``min_cohort`` is the smallest cohort a client joins: the floor that keeps a server from
    surrounding one client with colluders (docs/design.md §4.9).
    """

    members: Mapping[str, bytes]
    min_cohort: int = 3


def write_identity(
    directory: str | os.PathLike[str], name: str, *, force: bool = False
) -> tuple[Path, Path]:
    """Write ``identity.key`` (0600) and ``identity.pub`` for identity ``name`` into ``directory``.

    Raises
    ------
    KeyExistsError
        When either file exists and ``force`` is false.

    """
    _check_name(name)
    folder = Path(directory)
    private_path, public_path = folder / "identity.key", folder / "identity.pub"
    for path in (private_path, public_path):
        if path.is_symlink() or (path.exists() and not force):
            raise KeyExistsError(
                f"{str(path)!r} exists (or is a symbolic link); identities are never "
                "overwritten silently. Pass force=True (--force) to replace a regular file."
            )
    private, public = masks.new_identity()
    body = {"format": _IDENTITY_KIND, "name": name, "private": _b64(private)}
    write_file_atomic(private_path, dumps(body), mode=0o600)
    pub = {"format": _IDENTITY_PUBLIC_KIND, "name": name, "public": _b64(public)}
    write_file_atomic(public_path, dumps(pub), mode=0o644)
    return private_path, public_path


def _read_json(path: str | os.PathLike[str], kind: str) -> dict[str, Any]:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > _MAX_FILE:
            raise KeyFileError(
                f"{str(p)!r} has {size} bytes; a {kind} file is at most {_MAX_FILE}."
            )
        obj = json.loads(p.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        if isinstance(exc, KeyFileError):
            raise
        raise KeyFileError(f"cannot read {kind} file {str(p)!r}: {exc!s:.120}") from exc
    if not isinstance(obj, dict) or obj.get("format") != kind:
        raise KeyFileError(
            f"{str(p)!r} is not a {kind!r} file (format "
            f"{obj.get('format') if isinstance(obj, dict) else None!r:.40})."
        )
    return obj


def load_identity(path: str | os.PathLike[str]) -> Identity:
    """Read an identity key file; one readable by group or others is refused (like ssh)."""
    p = Path(path)
    obj = _read_json(p, _IDENTITY_KIND)
    if os.name == "posix" and p.stat().st_mode & 0o077:
        raise KeyFileError(
            f"identity key {str(p)!r} is readable by group or others (mode "
            f"{stat.S_IMODE(p.stat().st_mode):04o}); fix it with: chmod 600 {p}"
        )
    try:
        name = _check_name(str(obj.get("name", "")))
        private = _unb64(obj.get("private"), "the identity key", masks.KEY_BYTES)
    except MaskingError as exc:
        raise KeyFileError(f"identity key {str(p)!r}: {exc}") from exc
    return Identity(name, private)


def write_roster(
    path: str | os.PathLike[str],
    public_files: Sequence[str | os.PathLike[str]],
    *,
    min_cohort: int = 3,
) -> Path:
    """Write a roster of the identities in ``public_files`` (``identity.pub`` files)."""
    members: dict[str, str] = {}
    for file in public_files:
        obj = _read_json(file, _IDENTITY_PUBLIC_KIND)
        try:
            name = _check_name(str(obj.get("name", "")))
            public = _unb64(obj.get("public"), "an identity public key", masks.KEY_BYTES)
        except MaskingError as exc:
            raise KeyFileError(f"{str(file)!r}: {exc}") from exc
        if name in members:
            raise KeyFileError(f"identity {name!r} appears twice ({str(file)!r}).")
        members[name] = _b64(public)
    if not members or not 2 <= min_cohort <= MAX_COHORT:
        raise KeyFileError(
            f"a roster needs at least one identity and 2 <= min_cohort <= {MAX_COHORT}, got "
            f"{len(members)} identities and min_cohort {min_cohort}."
        )
    body = {"format": _ROSTER_KIND, "min_cohort": min_cohort, "members": members}
    return write_file_atomic(path, dumps(body), mode=0o644)


def load_roster(path: str | os.PathLike[str]) -> Roster:
    """Read a roster file (every field checked)."""
    obj = _read_json(path, _ROSTER_KIND)
    raw, floor = obj.get("members"), obj.get("min_cohort")
    if (
        not isinstance(raw, dict)
        or not raw
        or len(raw) > MAX_COHORT
        or isinstance(floor, bool)
        or not isinstance(floor, int)
        or not 2 <= floor <= MAX_COHORT
    ):
        raise KeyFileError(
            f"roster {str(path)!r} must hold 1..{MAX_COHORT} members and an integer "
            f"min_cohort in 2..{MAX_COHORT}."
        )
    try:
        members = {
            _check_name(str(name)): _unb64(pub, f"member {name!r}", masks.KEY_BYTES)
            for name, pub in raw.items()
        }
    except MaskingError as exc:
        raise KeyFileError(f"roster {str(path)!r}: {exc}") from exc
    return Roster(members, floor)


# ------------------------------------------------------------------ messages
@dataclass(frozen=True)
class Advert:
    """One client's advertised keys for one round, optionally signed by its identity."""

    node: int
    c_public: bytes
    s_public: bytes
    identity: str | None = None
    signature: bytes | None = None

    def signed_bytes(self, session: bytes, server_round: int) -> bytes:
        """What the identity signs: session, round, node, identity name and both keys."""
        return (
            _PREFIX
            + b"advert|"
            + session
            + _int(server_round)
            + _int(self.node)
            + (self.identity or "").encode()
            + b"|"
            + self.c_public
            + self.s_public
        )

    def to_json(self) -> dict[str, Any]:
        """JSON form. Inverse: :meth:`from_json`."""
        return {
            "node": self.node,
            "c": _b64(self.c_public),
            "s": _b64(self.s_public),
            "identity": self.identity,
            "sig": None if self.signature is None else _b64(self.signature),
        }

    @classmethod
    def from_json(cls, obj: object) -> Advert:
        """Parse and type-check an advertisement (signatures are checked by the client)."""
        if not isinstance(obj, dict) or set(obj) != {"node", "c", "s", "identity", "sig"}:
            raise MaskingError("an advertisement must have exactly node, c, s, identity, sig.")
        ident = obj["identity"]
        if ident is not None:
            ident = _check_name(ident) if isinstance(ident, str) else _check_name(repr(ident))
        sig = obj["sig"]
        return cls(
            _node_id(obj["node"], "an advertisement's node"),
            _unb64(obj["c"], "an advertised channel key", masks.KEY_BYTES),
            _unb64(obj["s"], "an advertised mask key", masks.KEY_BYTES),
            ident,
            None if sig is None else _unb64(sig, "an advertisement's signature", 64),
        )


def _pair(session: bytes, server_round: int, a: int, b: int) -> bytes:
    lo, hi = sorted((a, b))
    return session + _int(server_round) + _int(lo) + _int(hi)


def _pair_seed(
    s_private: bytes, peer_public: bytes, session: bytes, server_round: int, a: int, b: int
) -> bytes:
    info = _PREFIX + b"pair|" + _pair(session, server_round, a, b)
    return masks.agree(s_private, peer_public, info)


def _self_seed(b: bytes, session: bytes, server_round: int, node: int) -> bytes:
    return masks.derive_key(b, _PREFIX + b"self|" + session + _int(server_round) + _int(node))


def _channel(
    c_private: bytes, peer_public: bytes, session: bytes, rnd: int, a: int, b: int
) -> bytes:
    return masks.agree(
        c_private, peer_public, _PREFIX + b"channel|" + _pair(session, rnd, a, b), 32
    )


def _share_aad(session: bytes, server_round: int, src: int, dst: int) -> bytes:
    return _PREFIX + b"share|" + session + _int(server_round) + _int(src) + _int(dst)


def _commit(b: bytes) -> bytes:
    return hashlib.sha256(_PREFIX + b"self-commit|" + b).digest()


def _matches_commit(commit: bytes) -> Callable[[bytes], bool]:
    """Check of a rebuilt self-mask seed against its sender's commitment."""
    return lambda value: _commit(value) == commit


def _matches_key(public: bytes) -> Callable[[bytes], bool]:
    """Check of a rebuilt mask key against the public key its owner advertised."""
    return lambda value: masks.exchange_public(value) == public


# ------------------------------------------------------------------ key holder
@dataclass
class ClientSession:
    """A key holder's masking state for one round (kept in ``Context.state`` between stages).

    Created by :meth:`advertise`; :meth:`to_bytes` / :meth:`from_bytes` carry it between the
    ClientApp invocations. Every method checks that the server's request fits what this
    client saw before, and raises :class:`MaskingError` otherwise.
    """

    node: int
    session: bytes
    server_round: int
    c_private: bytes = field(repr=False)
    s_private: bytes = field(repr=False)
    stage: str = "advertised"
    identity: str | None = None
    adverts: dict[int, Advert] = field(default_factory=dict)
    graph_nodes: tuple[int, ...] = ()
    groups: tuple[tuple[int, ...], ...] = ()
    neighbours: tuple[int, ...] = ()
    self_secret: bytes = field(default=b"", repr=False)
    cohort: tuple[int, ...] = ()
    held: dict[int, tuple[bytes, bytes]] = field(default_factory=dict, repr=False)
    #: cohort clients whose share to this client was missing or failed authentication
    unopened: list[int] = field(default_factory=list)

    # -- stage 1
    @classmethod
    def advertise(
        cls, request: bytes, node: int, identity: Identity | None, last_round: int
    ) -> tuple[ClientSession, bytes]:
        """Answer an advertise request: fresh keys, signed when ``identity`` is given."""
        obj = loads(request, "advertise")
        session = _unb64(obj.get("session"), "the session", _SEED_BYTES)
        rnd = obj.get("round")
        if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd <= last_round:
            raise MaskingError(
                f"advertise request for round {rnd!r:.20}, but this client already masked "
                f"round {last_round}; a round is masked at most once (a repeated instance "
                "could reveal the difference of two sums)."
            )
        c_private, c_public = masks.new_exchange_key()
        s_private, s_public = masks.new_exchange_key()
        ad = Advert(node, c_public, s_public, identity.name if identity else None)
        if identity is not None:
            sig = masks.sign(identity.private, ad.signed_bytes(session, rnd))
            ad = Advert(node, c_public, s_public, identity.name, sig)
        me = cls(node, session, rnd, c_private, s_private, identity=ad.identity)
        me.adverts = {node: ad}
        return me, dumps({"v": _V, "stage": "advertised", "advert": ad.to_json()})

    # -- stage 2
    def share(self, request: bytes, roster: Roster | None) -> bytes:
        """Check every advertisement, derive the graph and seal shares for each holder."""
        self._expect("advertised", "share")
        obj = loads(request, "share")
        self._same_round(obj)
        raw = obj.get("adverts")
        if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_COHORT:
            raise MaskingError(f"a share request must list 2..{MAX_COHORT} advertisements.")
        ads = [Advert.from_json(a) for a in raw]
        by_node = {ad.node: ad for ad in ads}
        if len(by_node) != len(ads):
            raise MaskingError("a share request lists one node's advertisement twice.")
        if by_node.get(self.node) != self.adverts[self.node]:
            raise MaskingError(
                "the share request does not carry this client's advertisement unchanged "
                "(the server substituted its keys)."
            )
        floor = 3 if roster is None else roster.min_cohort
        if len(ads) < floor:
            raise MaskingError(
                f"a cohort of {len(ads)} clients is below the minimum of {floor}; this client "
                "does not mask with fewer (its update would be exposed to the others)."
            )
        self._check_identities(ads, roster)
        groups = _partition(obj.get("groups"), sorted(by_node), floor)
        graph = grouped_graph(groups, graph_seed(self.session, self.server_round, ads))
        holders = holders_of(graph, self.node)
        need = threshold(len(holders))
        b = secrets.token_bytes(_SEED_BYTES)
        points = {n: i + 1 for i, n in enumerate(sorted(by_node))}
        b_shares = masks.split_secret(b, [points[h] for h in holders], need)
        s_shares = masks.split_secret(self.s_private, [points[h] for h in holders], need)
        sealed: dict[str, str] = {}
        for h in holders:
            plain = b_shares[points[h]] + s_shares[points[h]]
            if h == self.node:
                self.held[self.node] = (b_shares[points[h]], s_shares[points[h]])
                continue
            key = _channel(
                self.c_private, by_node[h].c_public, self.session, self.server_round, self.node, h
            )
            aad = _share_aad(self.session, self.server_round, self.node, h)
            sealed[str(h)] = _b64(masks.seal(key, plain, aad))
        self.adverts, self.graph_nodes, self.groups = by_node, tuple(sorted(by_node)), groups
        self.neighbours, self.self_secret, self.stage = tuple(graph[self.node]), b, "shared"
        return dumps({"v": _V, "stage": "shared", "commit": _b64(_commit(b)), "shares": sealed})

    def _check_identities(self, ads: Sequence[Advert], roster: Roster | None) -> None:
        if roster is None:
            return
        names = [ad.identity for ad in ads]
        if None in names or len(set(names)) != len(names):
            raise MaskingError(
                "with a roster every advertisement must be signed by a distinct roster member; "
                "an unsigned advertisement or one identity used twice was refused."
            )
        for ad in ads:
            public = roster.members.get(str(ad.identity))
            if public is None or ad.signature is None:
                raise MaskingError(
                    f"advertisement of node {ad.node}: unknown identity {ad.identity!r}."
                )
            masks.verify(public, ad.signed_bytes(self.session, self.server_round), ad.signature)

    # -- stage 3
    def mask(self, request: bytes, count: int, modulus: int) -> npt.NDArray[np.int64]:
        """Open the shares addressed to this client and return its mask (``count`` ints mod t)."""
        self._expect("shared", "train")
        obj = loads(request, "train")
        self._same_round(obj)
        cohort = _nodes(obj.get("cohort"), "the train cohort")
        if self.node not in cohort or not set(cohort) <= set(self.graph_nodes):
            raise MaskingError(
                "the train cohort must contain this client and only clients that advertised."
            )
        graph = {n: self._graph()[n] for n in self.graph_nodes}
        mine = holders_of(graph, self.node)
        if sum(1 for h in mine if h in cohort) < threshold(len(mine)):
            raise MaskingError(
                f"only {sum(1 for h in mine if h in cohort)} of this client's {len(mine)} "
                f"share holders remain, fewer than the threshold {threshold(len(mine))}: its "
                "mask could never be removed; the round is refused."
            )
        raw = obj.get("shares")
        senders = [n for n in cohort if n != self.node and self.node in holders_of(graph, n)]
        if not isinstance(raw, dict) or not set(raw) <= {str(n) for n in senders}:
            raise MaskingError(
                "the train message may carry only sealed shares from cohort clients this client "
                f"holds shares for ({len(senders)})."
            )
        self.unopened = []
        for src in senders:
            # a missing or forged share only means this client cannot help rebuild src's
            # secrets (others can): one bad sender must not stop the round
            try:
                ad = self.adverts[src]
                key = _channel(
                    self.c_private, ad.c_public, self.session, self.server_round, src, self.node
                )
                aad = _share_aad(self.session, self.server_round, src, self.node)
                plain = masks.open_sealed(key, _unb64(raw.get(str(src)), "a sealed share"), aad)
                if len(plain) != 2 * masks.SHARE_BYTES:
                    raise MaskingError(f"the share from node {src} has {len(plain)} bytes.")
            except MaskingError:
                self.unopened.append(src)
                continue
            self.held[src] = (plain[: masks.SHARE_BYTES], plain[masks.SHARE_BYTES :])
        self.cohort = tuple(cohort)
        out = masks.expand_mask(
            _self_seed(self.self_secret, self.session, self.server_round, self.node), count, modulus
        )
        for j in self.neighbours:
            if j not in cohort:
                continue
            seed = _pair_seed(
                self.s_private,
                self.adverts[j].s_public,
                self.session,
                self.server_round,
                self.node,
                j,
            )
            masks.add_mask(out, seed, 1 if self.node < j else -1, modulus)
        self.stage = "masked"
        return np.remainder(out, modulus, out=out)

    # -- stage 4
    def unmask(self, request: bytes) -> bytes:
        """Reveal self-mask shares of survivors and key shares of dropped clients, once."""
        self._expect("masked", "unmask")
        obj = loads(request, "unmask")
        self._same_round(obj)
        survivors = _nodes(obj.get("survivors"), "the survivors")
        dropped = _nodes(obj.get("dropped"), "the dropped clients")
        if set(survivors) & set(dropped):
            raise MaskingError(
                f"the unmask request lists nodes {sorted(set(survivors) & set(dropped))[:5]} as "
                "both surviving and dropped; refused (it would reveal both of their secrets)."
            )
        if set(survivors) | set(dropped) != set(self.cohort) or self.node not in survivors:
            raise MaskingError(
                "the unmask request's survivors and dropped clients must partition the train "
                "cohort this client masked with, and include this client."
            )
        graph = self._graph()
        floor = threshold(len(holders_of(graph, self.node)))
        if len(survivors) < min(floor, len(self.cohort)):
            raise MaskingError(
                f"{len(survivors)} survivors are fewer than the threshold {floor}; nothing "
                "is revealed."
            )
        self.stage = "answered"  # whatever happens next: never a second answer this round
        b_out = {str(j): _b64(self.held[j][0]) for j in survivors if j in self.held}
        s_out = {str(j): _b64(self.held[j][1]) for j in dropped if j in self.held}
        self.held = {}
        return dumps({"v": _V, "stage": "unmasked", "self": b_out, "keys": s_out})

    # -- helpers
    def _graph(self) -> dict[int, tuple[int, ...]]:
        seed = graph_seed(self.session, self.server_round, self.adverts.values())
        return grouped_graph(self.groups or (self.graph_nodes,), seed)

    def _expect(self, stage: str, what: str) -> None:
        if self.stage != stage:
            raise MaskingError(
                f"a {what} request arrived in stage {self.stage!r} of round {self.server_round} "
                f"(expected after {stage!r}); out-of-order or repeated requests are refused."
            )

    def _same_round(self, obj: Mapping[str, Any]) -> None:
        session = _unb64(obj.get("session"), "the session", _SEED_BYTES)
        if session != self.session or obj.get("round") != self.server_round:
            raise MaskingError(
                f"request for round {obj.get('round')!r:.20} of another masking session; this "
                f"client is in round {self.server_round}."
            )

    def to_bytes(self) -> bytes:
        """Serialized state (JSON; secrets base64). Inverse: :meth:`from_bytes`."""
        return dumps(
            {
                "node": self.node,
                "session": _b64(self.session),
                "round": self.server_round,
                "c": _b64(self.c_private),
                "s": _b64(self.s_private),
                "stage": self.stage,
                "identity": self.identity,
                "adverts": [a.to_json() for a in self.adverts.values()],
                "graph": list(self.graph_nodes),
                "groups": [list(g) for g in self.groups],
                "neighbours": list(self.neighbours),
                "b": _b64(self.self_secret),
                "cohort": list(self.cohort),
                "held": {str(k): [_b64(v[0]), _b64(v[1])] for k, v in self.held.items()},
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ClientSession:
        """Restore the state written by :meth:`to_bytes` (the client's own memory)."""
        obj = json.loads(data)
        adverts = [Advert.from_json(a) for a in obj["adverts"]]
        return cls(
            node=int(obj["node"]),
            session=base64.b64decode(obj["session"]),
            server_round=int(obj["round"]),
            c_private=base64.b64decode(obj["c"]),
            s_private=base64.b64decode(obj["s"]),
            stage=str(obj["stage"]),
            identity=obj["identity"],
            adverts={a.node: a for a in adverts},
            graph_nodes=tuple(obj["graph"]),
            groups=tuple(tuple(g) for g in obj["groups"]),
            neighbours=tuple(obj["neighbours"]),
            self_secret=base64.b64decode(obj["b"]),
            cohort=tuple(obj["cohort"]),
            held={
                int(k): (base64.b64decode(v[0]), base64.b64decode(v[1]))
                for k, v in obj["held"].items()
            },
        )


# ------------------------------------------------------------------ server
@dataclass
class ServerSession:
    """The server's view of one round's masking: it relays and, at the end, unmasks.

    It never holds a client's secret except what the unmask stage reveals by design: the
    self-mask seeds of survivors and the mask keys of dropped clients.
    """

    server_round: int
    session: bytes = field(default_factory=lambda: secrets.token_bytes(_SEED_BYTES))
    adverts: dict[int, Advert] = field(default_factory=dict)
    commits: dict[int, bytes] = field(default_factory=dict)
    sealed: dict[int, dict[int, str]] = field(default_factory=dict)
    cohort: tuple[int, ...] = ()
    revealed_self: dict[int, dict[int, bytes]] = field(default_factory=dict)
    revealed_keys: dict[int, dict[int, bytes]] = field(default_factory=dict)
    #: SecureFed: the partition of ``U1`` fixed before sharing (masks only inside a group)
    groups: tuple[tuple[int, ...], ...] = ()

    def _head(self, stage: str) -> dict[str, Any]:
        return {"v": _V, "stage": stage, "session": _b64(self.session), "round": self.server_round}

    def advertise_request(self) -> bytes:
        """Payload of the advertise message (the same for every sampled client)."""
        return dumps(self._head("advertise"))

    def accept_advert(self, node: int, reply: bytes) -> None:
        """Keep a client's advertisement (format only: signatures are the clients' check)."""
        obj = loads(reply, "advertised")
        ad = Advert.from_json(obj.get("advert"))
        if ad.node != node:
            raise MaskingError(f"node {node} advertised keys for node {ad.node}.")
        if any(
            a.c_public == ad.c_public or a.s_public == ad.s_public for a in self.adverts.values()
        ):
            raise MaskingError("advertised keys repeat another client's (a copy).")
        self.adverts[node] = ad

    def share_request(self, groups: Sequence[Sequence[int]] = ()) -> bytes:
        """Payload of the share message: every advertisement of ``U1`` (and a partition).

        ``groups`` (SecureFed) partitions ``U1``; masks then cancel inside each group, so
        every group's sum can be unmasked on its own (docs/design.md §4.9).
        """
        body = self._head("share")
        body["adverts"] = [self.adverts[n].to_json() for n in sorted(self.adverts)]
        if groups:
            self.groups = tuple(tuple(sorted(g)) for g in groups)
            body["groups"] = [list(g) for g in self.groups]
        return dumps(body)

    def graph(self) -> dict[int, tuple[int, ...]]:
        """The neighbour graph every honest client derives from ``U1`` (and the groups)."""
        seed = graph_seed(self.session, self.server_round, self.adverts.values())
        return grouped_graph(self.groups or (tuple(sorted(self.adverts)),), seed)

    def accept_shares(self, node: int, reply: bytes) -> None:
        """Keep a client's sealed shares (exactly one per other holder) and its commitment."""
        obj = loads(reply, "shared", cohort=len(self.adverts))
        graph = self.graph()
        expected = {str(h) for h in holders_of(graph, node) if h != node}
        raw = obj.get("shares")
        if not isinstance(raw, dict) or set(raw) != expected:
            raise MaskingError(
                f"node {node} must send one sealed share to each of its {len(expected)} holders."
            )
        for value in raw.values():
            _unb64(value, "a sealed share", 12 + 2 * masks.SHARE_BYTES + 16)
        self.commits[node] = _unb64(obj.get("commit"), "a self-mask commitment", 32)
        self.sealed[node] = {int(k): v for k, v in raw.items()}

    def train_payload(self, node: int) -> bytes:
        """Payload of ``node``'s train message: the cohort ``U2`` and the shares sent to it."""
        body = self._head("train")
        body["cohort"] = list(self.cohort)
        body["shares"] = {
            str(src): self.sealed[src][node]
            for src in self.cohort
            if src != node and node in self.sealed[src]
        }
        return dumps(body)

    def fix_cohort(self) -> tuple[int, ...]:
        """``U2``: the advertisers whose shares arrived (they are the ones that can mask)."""
        self.cohort = tuple(sorted(self.sealed))
        return self.cohort

    def unmask_request(self, survivors: Iterable[int]) -> tuple[bytes, list[int], list[int]]:
        """Payload asking survivors for their shares; also returns ``(U3, D)``."""
        alive = sorted(set(survivors) & set(self.cohort))
        dropped = sorted(set(self.cohort) - set(alive))
        body = self._head("unmask")
        body["survivors"], body["dropped"] = alive, dropped
        return dumps(body), alive, dropped

    def accept_unmask(self, node: int, reply: bytes, survivors: Sequence[int]) -> None:
        """Keep the shares a survivor revealed (only for nodes it holds shares of)."""
        obj = loads(reply, "unmasked", cohort=len(self.cohort))
        graph = self.graph()
        holds = {j for j in self.cohort if node in holders_of(graph, j)}
        for kind, store, allowed in (
            ("self", self.revealed_self, holds & set(survivors)),
            ("keys", self.revealed_keys, holds - set(survivors)),
        ):
            raw = obj.get(kind)
            if not isinstance(raw, dict) or not set(raw) <= {str(j) for j in allowed}:
                raise MaskingError(f"node {node}'s unmask reply has unexpected {kind} shares.")
            for j, value in raw.items():
                store.setdefault(int(j), {})[node] = _unb64(value, "a share", masks.SHARE_BYTES)

    def residual(
        self,
        survivors: Sequence[int],
        count: int,
        modulus: int,
        within: Iterable[int] | None = None,
    ) -> npt.NDArray[np.int64]:
        """The mask left in the sum of ``survivors``' uploads (``count`` ints mod ``modulus``).

        ``within`` (a union of whole groups, SecureFed) restricts it to the sum of the
        survivors in those groups.

        Raises
        ------
        MaskingError
            When a secret cannot be rebuilt (too few shares, or shares that contradict the
            commitment / the advertised key) — the round must then release nothing.

        """
        graph = self.graph()
        points = {n: i + 1 for i, n in enumerate(sorted(self.adverts))}
        scope = set(self.cohort) if within is None else set(within) & set(self.cohort)
        alive = set(survivors) & scope
        out = np.zeros(count, np.int64)
        for j in sorted(alive):
            commit = self.commits[j]
            b = self._rebuild(
                j,
                self.revealed_self,
                graph,
                points,
                _SEED_BYTES,
                "self-mask seed",
                _matches_commit(commit),
            )
            seed = _self_seed(b, self.session, self.server_round, j)
            masks.add_mask(out, seed, 1, modulus)
        for j in sorted(scope - set(survivors)):
            advertised = self.adverts[j].s_public
            s_private = self._rebuild(
                j,
                self.revealed_keys,
                graph,
                points,
                masks.KEY_BYTES,
                "mask key",
                _matches_key(advertised),
            )
            for i in graph[j]:
                if i not in alive:
                    continue
                seed = _pair_seed(
                    s_private, self.adverts[i].s_public, self.session, self.server_round, i, j
                )
                masks.add_mask(out, seed, 1 if i < j else -1, modulus)
        return np.remainder(out, modulus, out=out)

    def _rebuild(
        self,
        node: int,
        revealed: Mapping[int, Mapping[int, bytes]],
        graph: Mapping[int, Sequence[int]],
        points: Mapping[int, int],
        size: int,
        what: str,
        valid: Callable[[bytes], bool],
    ) -> bytes:
        """Rebuild ``node``'s secret from the revealed shares; ``valid`` checks the result.

        The first ``threshold`` shares are tried, then (one wrong share among more than
        ``threshold``) every set that leaves one holder out; a secret that fails its
        commitment or advertised key is never used.
        """
        need = threshold(len(holders_of(graph, node)))
        got = {points[h]: share for h, share in revealed.get(node, {}).items()}
        if len(got) < need:
            raise MaskingError(
                f"{len(got)} shares of node {node}'s {what} arrived, fewer than the threshold "
                f"{need}; the residual mask cannot be removed and nothing is released."
            )
        candidates = [got] + (
            [{x: v for x, v in got.items() if x != left} for left in sorted(got)]
            if len(got) > need
            else []
        )
        for shares in candidates:
            try:
                secret = masks.combine_shares(shares, need, size)
            except MaskingError:
                continue
            if valid(secret):
                return secret
        raise MaskingError(
            f"the {len(got)} shares of node {node}'s {what} do not rebuild the committed value "
            "(wrong shares from more than one holder); nothing is released."
        )
