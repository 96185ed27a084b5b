"""The generic Flower app behind ``cifer run``: the Hydra config decides everything.

``flwr run`` it with ``--run-config "hydra-overrides='strategy=fedyogi topology=p2p'"``.
"""
