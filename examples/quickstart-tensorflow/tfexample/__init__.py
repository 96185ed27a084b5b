"""Encrypted federated learning with Keras (cifer-flwr quickstart)."""
