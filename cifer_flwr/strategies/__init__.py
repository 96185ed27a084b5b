"""Encrypted Flower strategies: swap the import and add ``public_key=``.

Each class subclasses the class of the same name in ``flwr.serverapp.strategy``.
"""

from cifer_flwr.strategies.fedadagrad import FedAdagrad
from cifer_flwr.strategies.fedadam import FedAdam
from cifer_flwr.strategies.fedavg import FedAvg
from cifer_flwr.strategies.fedprox import FedProx
from cifer_flwr.strategies.fedyogi import FedYogi
from cifer_flwr.strategies.securefed import SecureFed

__all__ = ["FedAdagrad", "FedAdam", "FedAvg", "FedProx", "FedYogi", "SecureFed"]
