"""The harness's Flower-app helpers: the library's :mod:`cifer_flwr.apps`, one copy.

The examples' helpers moved to the library (issue 20 item 5): run config -> strategy and
the switched client mod live in :mod:`cifer_flwr.apps.runconfig`, the metered run and the
results file in :mod:`cifer_flwr.apps.run`. The harness's ServerApps and ClientApps, the
FedLearn apps and the launcher import them from here under their historic path.
"""

from cifer_flwr.apps.run import previous_rows, run_metered, run_strategy
from cifer_flwr.apps.runconfig import (
    CHECKPOINT_SUFFIX,
    checkpoint_path,
    encryption_enabled,
    encryption_mod,
    make_strategy,
    path_option,
    resume_requested,
    switched_ckks_mod,
)

__all__ = [
    "CHECKPOINT_SUFFIX",
    "checkpoint_path",
    "encryption_enabled",
    "encryption_mod",
    "make_strategy",
    "path_option",
    "previous_rows",
    "resume_requested",
    "run_metered",
    "run_strategy",
    "switched_ckks_mod",
]
