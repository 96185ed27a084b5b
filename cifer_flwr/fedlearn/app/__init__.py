"""The Flower app behind :class:`cifer_flwr.fedlearn.Server` and ``CiferClient``.

The clients' own data and model come from their node config, the strategy from run config
``fedlearn-strategy``.
"""
