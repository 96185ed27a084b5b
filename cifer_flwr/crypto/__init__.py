"""CKKS primitives: the only part of cifer_flwr that imports TenSEAL ("hazmat").

Everything above this package works with :class:`EncryptedArrays`, :class:`Key` and
Flower ``ArrayRecord`` objects, never with TenSEAL types directly.
"""

from cifer_flwr.crypto.ckks import (
    EncryptedArrays,
    add,
    aggregate,
    bundle_from_bytes,
    bundle_to_bytes,
    decrypt,
    encrypt,
    from_bytes,
    to_bytes,
    with_meta,
)
from cifer_flwr.crypto.encoding import Layout, decode, encode, flatten, unflatten
from cifer_flwr.crypto.keys import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    Key,
    generate_key,
    load_key,
    load_private_key,
    load_public_key,
    write_key_pair,
)
from cifer_flwr.crypto.params import PRESETS, CkksParams, for_depth, get_preset
from cifer_flwr.crypto.records import (
    bundle_from_record,
    bundle_to_record,
    from_array_record,
    is_encrypted_record,
    record_headers,
    to_array_record,
)

__all__ = [
    "PRESETS",
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "CkksParams",
    "EncryptedArrays",
    "Key",
    "Layout",
    "add",
    "aggregate",
    "bundle_from_bytes",
    "bundle_from_record",
    "bundle_to_bytes",
    "bundle_to_record",
    "decode",
    "decrypt",
    "encode",
    "encrypt",
    "flatten",
    "for_depth",
    "from_array_record",
    "from_bytes",
    "generate_key",
    "get_preset",
    "is_encrypted_record",
    "load_key",
    "load_private_key",
    "load_public_key",
    "record_headers",
    "to_array_record",
    "to_bytes",
    "unflatten",
    "with_meta",
    "write_key_pair",
]
