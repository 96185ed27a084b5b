"""Encryption primitives: the only part of cifer_flwr that imports TenSEAL or phe ("hazmat").

Everything above this package works with :class:`EncryptedArrays` / :class:`PaillierArrays`,
keys and Flower ``ArrayRecord`` objects, never with TenSEAL or phe types directly. Every key
implements one interface, :class:`SchemeKey` (``encrypt``, ``decrypt``, ``from_bytes``,
``fingerprint``, ``has_reserved_slots``, ``exact_sums``, ...), and comes from one loader,
:func:`load_key` (:func:`load_private_key` / :func:`load_public_key` also check its kind);
``encrypt``, ``decrypt``, ``aggregate``, the (de)serializers and the records take a key of
any scheme (:mod:`.schemes`, docs/design.md §3, §4.8). The per-scheme modules (``ckks``,
``paillier``, ``keys``) are the crypto layer's own: code above it imports this package.
"""

import sys as _sys

if "tenseal" not in _sys.modules and {"tensorflow", "keras"} & set(_sys.modules):
    # Measured here (tensorflow-cpu 2.21, tenseal 0.3.18): with TensorFlow loaded first,
    # SEAL's serialization segfaults and the process dies without a message.
    raise ImportError(
        "cifer_flwr.crypto must be imported before tensorflow/keras: TenSEAL crashes (segfault) "
        "when TensorFlow was loaded first in the same process. Import cifer_flwr (or "
        "cifer_flwr.crypto) at the top of your module, before tensorflow or keras."
    )

from cifer_flwr.crypto.ckks import (
    EncryptedArrays,
    decrypt_chunks,
    deferred_blobs,
    subtract_mask,
    with_wire,
)
from cifer_flwr.crypto.encoding import Layout, decode, encode, flatten, unflatten
from cifer_flwr.crypto.keys import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    Key,
    generate_key,
    key_directory,
    write_key_pair,
)
from cifer_flwr.crypto.paillier import (
    PaillierArrays,
    PaillierKey,
    PaillierParams,
    is_paillier_preset,
)
from cifer_flwr.crypto.params import PRESETS, CkksParams, for_depth, get_preset
from cifer_flwr.crypto.records import (
    FramedRecord,
    bundle_from_framed,
    bundle_from_record,
    bundle_to_record,
    frame_record,
    from_array_record,
    is_encrypted_record,
    record_ciphertext_views,
    record_ciphertexts,
    record_headers,
    record_part_names,
    to_array_record,
)
from cifer_flwr.crypto.schemes import (
    AnyEncrypted,
    AnyKey,
    AnyParams,
    SchemeKey,
    add,
    aggregate,
    bundle_from_bytes,
    bundle_to_bytes,
    decrypt,
    encrypt,
    from_bytes,
    generate_key_pair,
    has_exact_sums,
    has_reserved_slots,
    load_key,
    load_private_key,
    load_public_key,
    max_ciphertext_bytes,
    to_bytes,
    with_meta,
)
from cifer_flwr.crypto.validation import load_chunk, load_vector
from cifer_flwr.crypto.workers import CryptoWorkers, default_processes, shared_workers

__all__ = [
    "PRESETS",
    "AnyEncrypted",
    "AnyKey",
    "AnyParams",
    "PaillierArrays",
    "PaillierKey",
    "PaillierParams",
    "SchemeKey",
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "CkksParams",
    "CryptoWorkers",
    "EncryptedArrays",
    "FramedRecord",
    "Key",
    "Layout",
    "add",
    "subtract_mask",
    "aggregate",
    "bundle_from_bytes",
    "bundle_from_framed",
    "bundle_from_record",
    "bundle_to_bytes",
    "bundle_to_record",
    "decode",
    "decrypt",
    "decrypt_chunks",
    "default_processes",
    "deferred_blobs",
    "encode",
    "encrypt",
    "flatten",
    "for_depth",
    "frame_record",
    "from_array_record",
    "from_bytes",
    "generate_key",
    "generate_key_pair",
    "get_preset",
    "has_exact_sums",
    "has_reserved_slots",
    "is_paillier_preset",
    "is_encrypted_record",
    "record_ciphertext_views",
    "record_ciphertexts",
    "key_directory",
    "load_key",
    "load_private_key",
    "load_public_key",
    "load_chunk",
    "load_vector",
    "max_ciphertext_bytes",
    "record_headers",
    "record_part_names",
    "shared_workers",
    "to_array_record",
    "to_bytes",
    "unflatten",
    "with_meta",
    "with_wire",
    "write_key_pair",
]
