"""Encrypted Flower strategies: swap the import and add ``public_key=``.

Each class subclasses the class of the same name in ``flwr.serverapp.strategy``.
:class:`EncryptedFedAvgBase` and :class:`EncryptedFedOptBase` are the base classes to
write your own encrypted strategy; ``fedavgm.py`` is the worked example.
:data:`REGISTRY` (:mod:`.registry`) lists every strategy with its hyperparameters' defaults,
ranges and run-config keys.
"""

from cifer_flwr.strategies._base import EncryptedFedAvgBase
from cifer_flwr.strategies._fedopt import EncryptedFedOptBase
from cifer_flwr.strategies._pull import DelegatingGrid, stream_replies
from cifer_flwr.strategies.fedadagrad import FedAdagrad
from cifer_flwr.strategies.fedadam import FedAdam
from cifer_flwr.strategies.fedavg import FedAvg
from cifer_flwr.strategies.fedavgm import FedAvgM
from cifer_flwr.strategies.fedprox import FedProx
from cifer_flwr.strategies.fedyogi import FedYogi
from cifer_flwr.strategies.registry import REGISTRY, StrategySpec, strategy_spec
from cifer_flwr.strategies.securefed import SecureFed

__all__ = [
    "DelegatingGrid",
    "EncryptedFedAvgBase",
    "EncryptedFedOptBase",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "REGISTRY",
    "SecureFed",
    "StrategySpec",
    "strategy_spec",
    "stream_replies",
]
