"""Encrypted federated learning with Keras (cifer-flwr quickstart).

TenSEAL must be loaded before TensorFlow: with TensorFlow imported first, serializing a TenSEAL
context crashes the process (a native-library clash). Importing ``cifer_flwr.crypto`` here,
before any module of this package imports keras, keeps the order right.
"""

import cifer_flwr.crypto  # noqa: F401  (load TenSEAL before TensorFlow)
