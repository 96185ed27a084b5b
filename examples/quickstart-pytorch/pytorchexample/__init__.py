"""Encrypted federated learning with PyTorch on 8x8 digits (cifer-flwr quickstart)."""
