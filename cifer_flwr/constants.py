"""Wire strings shared by every layer: record keys, config keys, stypes and file magics."""

from __future__ import annotations

from typing import Final

#: ``Array.stype`` of one serialized CKKS ciphertext inside an ``ArrayRecord``.
STYPE_CIPHERTEXT: Final = "cifer.ckks.ciphertext/1"
#: ``Array.stype`` of the JSON header (layout, fingerprint, preset) inside an ``ArrayRecord``.
STYPE_HEADER: Final = "cifer.ckks.header/1"
#: Prefix of every ``Array`` key in an encrypted ``ArrayRecord``
#: (``cifer.<part>.header`` and ``cifer.<part>.ct.<index>``).
RECORD_PREFIX: Final = "cifer."

#: Magic bytes opening every cifer container file (keys, encrypted models and datasets).
CONTAINER_MAGIC: Final = b"CIFERv1\x00"
#: Container ``kind`` of key files.
KIND_KEY: Final = "cifer.key"
#: Container ``kind`` of encrypted named arrays (models, updates).
KIND_ENCRYPTED_ARRAYS: Final = "cifer.encrypted-arrays"
#: Container ``kind`` of a bundle of named encrypted parts (a FedOpt global model).
KIND_ENCRYPTED_BUNDLE: Final = "cifer.encrypted-bundle"
#: Container ``kind`` of Paillier key files (crypto/paillier.py, docs/design.md §4.8).
KIND_PAILLIER_KEY: Final = "cifer.paillier-key"
#: Container ``kind`` of Paillier-encrypted packed arrays (crypto/paillier.py).
KIND_PAILLIER_ARRAYS: Final = "cifer.paillier-arrays"
#: Container ``kind`` of a HomoCryption CKKS vector (crypto/vectors.py).
KIND_CKKS_VECTOR: Final = "cifer.ckks-vector"

#: Environment variable a client reads the private key path from when node config has none.
ENV_PRIVATE_KEY: Final = "CIFER_PRIVATE_KEY"
#: Node-config key holding the private key path of a SuperNode.
NODE_CONFIG_PRIVATE_KEY: Final = "private-key"

# --- protocol: ConfigRecord keys the strategies send and the client mod reads ---------------
#: Public divisor ``B``: a client encrypts ``(n_i / B) * w_i`` so the server only adds.
CFG_WEIGHT_DIVISOR: Final = "cifer.weight-divisor"
#: Name of the metric holding the example count (Flower's ``weighted_by_key``).
CFG_WEIGHTED_BY: Final = "cifer.weighted-by-key"
#: True for the one sampled client that must return the refreshed encrypted FedOpt state.
CFG_RETURN_STATE: Final = "cifer.return-state"
#: SecureFed: L2 bound of each client's update.
CFG_CLIP_NORM: Final = "cifer.clip-norm"
#: SecureFed: std of the Gaussian noise each client adds (``sigma * C / sqrt(K)``).
CFG_NOISE_STD: Final = "cifer.noise-std"
#: SecureFed: whether clients add the aggregation-check part.
CFG_CHECK: Final = "cifer.check"
#: SecureFed: this client's slot in the participation vector.
CFG_SLOT: Final = "cifer.slot"
#: SecureFed: number of sampled clients in this round (length of the participation vector).
CFG_COHORT: Final = "cifer.cohort-size"
#: SecureFed: per-run nonce that every per-chunk integrity tag is derived from.
CFG_SESSION: Final = "cifer.session"

#: Key of the ConfigRecord the mod adds to replies (state digest, clipping report).
REPLY_RECORD: Final = "cifer"
#: Digest of the key holder's materialized FedOpt state.
REPLY_STATE_DIGEST: Final = "state-digest"
#: L2 norm of the client's update before clipping.
REPLY_UPDATE_NORM: Final = "update-norm"
#: SecureFed: comma-separated indices of the candidate groups whose check failed.
REPLY_FAILED_GROUPS: Final = "failed-groups"
#: FedOpt: ``"pass"`` or ``"fail"``, whether the state the server sent equals the state this
#: key holder computed in the round that state came from (docs/design.md §4.3).
REPLY_STATE_CHECK: Final = "state-check"
#: SecureFed: opening words of every refusal by a key holder (error replies carry them).
CHECK_FAILED: Final = "aggregation check failed"

#: Bundle part names inside an encrypted ArrayRecord.
PART_MODEL: Final = "model"
PART_STATE: Final = "state"
PART_CHECK: Final = "check"
#: SecureFed: suffix of the candidate-group parts (``model_g0``, ``check_g0``, ...).
PART_GROUP_SUFFIX: Final = "_g"

#: SecureFed: public metadata of an aggregate (round of its contributions, round of the global
#: they trained from, session nonce, clipping bound, per-client noise std, group index).
META_ROUND: Final = "round"
META_BASE_ROUND: Final = "base_round"
META_SESSION: Final = "session"
META_CLIP_NORM: Final = "clip_norm"
META_NOISE_STD: Final = "noise_std"
META_GROUP: Final = "group"
#: SecureFed: the cohort slots an aggregate sums, a hex bitmask (bit ``s`` = slot ``s``); key
#: holders require exactly these slots in its check part (docs/design.md §4.4.2).
META_SLOTS: Final = "slots"

#: SecureFed: keys in a key holder's ``Context.state`` for the last global it accepted.
STATE_BASE_ARRAYS: Final = "cifer.securefed.base"
STATE_BASE_INFO: Final = "cifer.securefed.base-info"
#: FedOpt: keys in a key holder's ``Context.state`` for the state it computed last (packed)
#: and its round, against which the state an asked holder returned is checked (§4.3).
STATE_FEDOPT_ARRAYS: Final = "cifer.fedopt.state"
STATE_FEDOPT_INFO: Final = "cifer.fedopt.state-info"
#: FedOpt: public metadata of the server's state part, the round whose replies returned it.
META_STATE_ROUND: Final = "state_round"

#: Container ``kind`` of a dataset encrypted for training (securetrain scenario 1).
KIND_ENCRYPTED_DATASET: Final = "cifer.encrypted-dataset"
#: Container ``kind`` of an encrypted logistic-regression model (securetrain).
KIND_ENCRYPTED_MODEL: Final = "cifer.encrypted-model"

# --- strategy robustness and checkpoints ------------------------------------------------------
#: Container ``kind`` of a strategy checkpoint (encrypted global model + round state).
KIND_STRATEGY_CHECKPOINT: Final = "cifer.strategy-checkpoint"
#: Marker in the name of a checkpoint's temporary file (``.NAME.cifer-tmp-XXXX``), removed on
#: the next start when a crash left it behind.
CHECKPOINT_TMP_MARK: Final = ".cifer-tmp-"
#: Train metric: 1 when the round released a new global model, 0 when it released nothing.
METRIC_RELEASED: Final = "cifer-released"
#: Train metric: number of replies that passed every check and entered the aggregate.
METRIC_VALID_REPLIES: Final = "cifer-valid-replies"
#: Train metric: number of replies excluded in the round (with reasons in ``excluded``).
METRIC_EXCLUDED: Final = "cifer-excluded"
#: Train metric: seconds the server spent adding ciphertexts.
METRIC_AGGREGATE_S: Final = "cifer-aggregate-s"
#: Train-reply metric: values a ``packed`` client clipped to its share of the range (§4.7).
METRIC_CLIPPED: Final = "cifer-clipped"

# --- secure aggregation: pairwise masks inside packed sums (docs/design.md §4.9) ---------------
#: ConfigRecord of a masking message (request and reply); its one value is the JSON payload.
MASK_RECORD: Final = "cifer.mask"
#: Key of the JSON payload (bytes) inside :data:`MASK_RECORD`.
MASK_PAYLOAD: Final = "payload"
#: ConfigRecord in the key holder's ``Context.state`` with the masking secrets of one round.
MASK_STATE: Final = "cifer.mask-state"
#: Node-config key of a key holder's Ed25519 identity key file (signs its advertisements).
NODE_IDENTITY_KEY: Final = "identity-key"
#: Node-config key of the roster file (the identity public keys every client accepts).
NODE_ROSTER: Final = "roster"
#: Train metric: 1 when the round's aggregate was masked (and unmasked before release).
METRIC_MASKED: Final = "cifer-masked"
