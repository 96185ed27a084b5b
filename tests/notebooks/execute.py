"""Execute a notebook with nbclient and save the executed copy.

Usage: python -m tests.notebooks.execute NOTEBOOK OUT_NOTEBOOK [TIMEOUT_S]

The kernel runs with the notebook's directory as its working directory (as in Jupyter) and
inherits this process's environment; the tests start this module inside a loopback-only
network namespace, so the kernel and everything it starts (Flower, Ray) stay there. A cell
that raises stops the run: exit code 1, the executed copy (with the traceback) still saved.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main() -> int:
    source, out, *rest = sys.argv[1:]
    timeout = int(rest[0]) if rest else 600
    nb = nbformat.read(source, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(Path(source).resolve().parent)}},
    )
    try:
        client.execute()
    except CellExecutionError as exc:
        print(f"cell failed: {str(exc)[-3000:]}", file=sys.stderr)
        return 1
    finally:
        nbformat.write(nb, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
