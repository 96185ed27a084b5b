"""Helpers for Flower apps that run encrypted or as a plaintext baseline (the examples' API).

The examples under ``examples/`` import the library and this package only, so that their
``server_app.py``, ``client_app.py`` and ``task.py`` stay short and identical in shape:

* ServerApp: :func:`make_strategy` (run config -> one of :mod:`cifer_flwr.strategies`, or
  Flower's class of the same name when ``encryption = false``) and :func:`run_strategy`
  (runs it on a metered grid and writes the results file after every round).
* ClientApp: :data:`encryption_mod` (:func:`cifer_flwr.mods.ckks_mod` switched by run config
  ``encryption``) and :func:`encryption_enabled`.
* Data: this node's partition (:func:`node_partition`) of a built-in dataset or of the
  user's own file, read as hostile input (:func:`run_dataset`, :func:`run_dataset_shape`,
  :func:`check_partition`, :func:`cached_dataset`), and the initial model file
  (:func:`read_model_arrays`, :func:`check_model_arrays`).

The modules behind it, :mod:`~cifer_flwr.apps.runconfig`, :mod:`~cifer_flwr.apps.run`,
:mod:`~cifer_flwr.apps.results`, :mod:`~cifer_flwr.apps.data` and
:mod:`~cifer_flwr.apps.model_files`, are also what the experiment harness builds on (one
strategy builder, one run loop, one results schema, one set of file readers).
"""

from cifer_flwr.apps.data import (
    DATASET_PATH_KEY,
    Partition,
    cached_dataset,
    check_partition,
    node_partition,
    run_dataset,
    run_dataset_shape,
)
from cifer_flwr.apps.model_files import check_model_arrays, read_model_arrays
from cifer_flwr.apps.run import run_strategy
from cifer_flwr.apps.runconfig import (
    encryption_enabled,
    encryption_mod,
    make_strategy,
    path_option,
)

__all__ = [
    "DATASET_PATH_KEY",
    "Partition",
    "cached_dataset",
    "check_model_arrays",
    "check_partition",
    "encryption_enabled",
    "encryption_mod",
    "make_strategy",
    "node_partition",
    "path_option",
    "read_model_arrays",
    "run_dataset",
    "run_dataset_shape",
    "run_strategy",
]
