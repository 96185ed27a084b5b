"""A harness partition scaled with the federation's statistics (docs/design.md §4.10).

The statistics round itself is :mod:`cifer_flwr.scaling` (library).
"""

from __future__ import annotations

from flwr.app import Context

from cifer_flwr.apps.data import Partition
from cifer_flwr.scaling import global_statistics

__all__ = ["scaled_partition"]


def scaled_partition(raw: Partition, context: Context) -> Partition:
    """``raw`` standardised with the federation's statistics kept in ``context.state``.

    Raises
    ------
    StatisticsError
        When this node has no statistics for the run (:func:`global_statistics`).

    """
    stats = global_statistics(context)
    return Partition(
        stats.standardize(raw.x_train), raw.y_train, stats.standardize(raw.x_test), raw.y_test
    )
