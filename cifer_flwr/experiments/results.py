"""The harness's results schema and writer: the library's :mod:`cifer_flwr.apps.results`.

The examples' ServerApps write the results file through the library (issue 20 item 5); the
harness's generic app and topologies import the same schema and writer from here under
their historic path, so every ServerApp writes one schema.
"""

from cifer_flwr.apps.results import (
    RESULT_KEYS,
    RESULTS_FORMAT,
    ROUND_KEYS,
    ResultsWriter,
    format_round,
    round_row,
    run_failure,
    write_json_atomic,
    write_results,
)

__all__ = [
    "RESULTS_FORMAT",
    "RESULT_KEYS",
    "ROUND_KEYS",
    "ResultsWriter",
    "format_round",
    "round_row",
    "run_failure",
    "write_json_atomic",
    "write_results",
]
