"""Wire strings shared by every layer: record keys, config keys, stypes and file magics."""

from __future__ import annotations

from typing import Final

#: ``Array.stype`` of one serialized CKKS ciphertext inside an ``ArrayRecord``.
STYPE_CIPHERTEXT: Final = "cifer.ckks.ciphertext/1"
#: ``Array.stype`` of the JSON header (layout, fingerprint, preset) inside an ``ArrayRecord``.
STYPE_HEADER: Final = "cifer.ckks.header/1"
#: Key of the header ``Array`` in an encrypted ``ArrayRecord``.
RECORD_HEADER_KEY: Final = "cifer.header"
#: Prefix of the ciphertext ``Array`` keys in an encrypted ``ArrayRecord``.
RECORD_CHUNK_PREFIX: Final = "cifer.ct."

#: Magic bytes opening every cifer container file (keys, encrypted models and datasets).
CONTAINER_MAGIC: Final = b"CIFERv1\x00"
#: Container ``kind`` of key files.
KIND_KEY: Final = "cifer.key"
#: Container ``kind`` of encrypted named arrays (models, updates).
KIND_ENCRYPTED_ARRAYS: Final = "cifer.encrypted-arrays"

#: Environment variable a client reads the private key path from when node config has none.
ENV_PRIVATE_KEY: Final = "CIFER_PRIVATE_KEY"
#: Node-config key holding the private key path of a SuperNode.
NODE_CONFIG_PRIVATE_KEY: Final = "private-key"
