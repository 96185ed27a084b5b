"""cifer_flwr: CKKS homomorphic encryption for Flower federated learning."""

__version__ = "0.1.0"

__all__ = ["__version__"]
