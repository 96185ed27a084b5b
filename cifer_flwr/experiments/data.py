"""The harness's datasets and partitioners: the library's :mod:`cifer_flwr.apps.data`.

The examples read their data through the library (issue 20 item 5); the harness's tasks,
topologies, FedLearn apps and tooling import the same functions from here under their
historic path, so there is one copy of every reader and partitioner.
"""

from cifer_flwr.apps.data import (
    DATASET_PATH_KEY,
    DATASETS,
    Partition,
    cached_dataset,
    check_dataset_file,
    check_partition,
    load_dataset,
    load_file_dataset,
    load_partition,
    node_partition,
    partition_dirichlet,
    partition_iid,
    run_dataset,
    run_dataset_shape,
    whole,
)

__all__ = [
    "DATASETS",
    "DATASET_PATH_KEY",
    "Partition",
    "cached_dataset",
    "check_dataset_file",
    "check_partition",
    "load_dataset",
    "load_file_dataset",
    "load_partition",
    "node_partition",
    "partition_dirichlet",
    "partition_iid",
    "run_dataset",
    "run_dataset_shape",
    "whole",
]
