"""Encrypted federated logistic regression with scikit-learn (cifer-flwr quickstart)."""
