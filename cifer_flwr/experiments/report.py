"""Plots and comparison tables of experiment results (``metrics.json`` files)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cifer_flwr.exceptions import MissingExtraError
from cifer_flwr.extras import check, require

__all__ = ["find_runs", "plot_or_note", "plot_runs", "report", "table"]

#: What the plots need matplotlib for (the ``plot`` extra), for the missing-extra message.
PLOT_PURPOSE = "plots of accuracy and loss per round"


def _label(run: dict[str, Any]) -> str:
    enc = f"ckks:{run.get('preset')}" if run.get("encrypted") else "plaintext"
    return f"{run.get('strategy')} / {run.get('topology')} / {enc} / {run.get('task')}"


def plot_runs(
    runs: dict[str, dict[str, Any]], path: str | os.PathLike[str], title: str = ""
) -> Path:
    """Accuracy and loss per round of one or more runs, as a PNG.

    Raises
    ------
    MissingExtraError
        When matplotlib (the ``plot`` extra) is not installed.

    """
    matplotlib = require("matplotlib", purpose=PLOT_PURPOSE)
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", purpose=PLOT_PURPOSE)
    ticker = require("matplotlib.ticker", purpose=PLOT_PURPOSE)

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for name, run in runs.items():
        rows = run.get("rounds", [])
        rounds = [r["round"] for r in rows]
        # encrypted runs dashed over solid plaintext ones: equal curves stay visible
        style = {"linestyle": "--", "marker": "x"} if run.get("encrypted") else {"marker": "o"}
        ax_acc.plot(rounds, [r.get("accuracy") for r in rows], label=name, **style)
        ax_loss.plot(rounds, [r.get("loss") for r in rows], label=name, **style)
    ax_acc.set(xlabel="round", ylabel="accuracy", title="federated evaluation accuracy")
    ax_loss.set(xlabel="round", ylabel="loss", title="federated evaluation loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax_acc.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_or_note(
    runs: dict[str, dict[str, Any]],
    path: str | os.PathLike[str],
    note: Callable[[str], None],
    title: str = "",
) -> Path | None:
    """:func:`plot_runs`, or one line to ``note`` (naming the extra) when matplotlib is missing.

    For commands whose results matter more than their plot (``cifer run``): the results are
    written either way and the run does not fail for a PNG.
    """
    try:
        return plot_runs(runs, path, title)
    except MissingExtraError as exc:
        note(f"skipped {Path(path).name}: {exc}")
        return None


def find_runs(directory: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """All ``metrics.json`` under ``directory``, keyed by their folder relative to it."""
    root = Path(directory)
    runs = {}
    for path in sorted(root.rglob("metrics.json")):
        runs[str(path.parent.relative_to(root)) or "."] = json.loads(path.read_text())
    return runs


def _mean(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(runs: dict[str, dict[str, Any]]) -> str:
    """A markdown table: final accuracy and loss, mean round time and bytes per round."""
    lines = [
        "| run | strategy | topology | encryption | final accuracy | final loss | "
        "round s (mean) | MB sent / round | MB received / round |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        rows = run.get("rounds", [])
        last = rows[-1] if rows else {}
        enc = f"ckks ({run.get('preset')})" if run.get("encrypted") else "none"
        sent = _mean([r.get("bytes-sent") for r in rows])
        recv = _mean([r.get("bytes-received") for r in rows])
        lines.append(
            f"| {name} | {run.get('strategy')} | {run.get('topology')} | {enc} | "
            f"{_fmt(last.get('accuracy'), '.4f')} | {_fmt(last.get('loss'), '.4f')} | "
            f"{_fmt(_mean([r.get('round-s') for r in rows]), '.2f')} | "
            f"{_fmt(None if sent is None else sent / 1e6, '.3f')} | "
            f"{_fmt(None if recv is None else recv / 1e6, '.3f')} |"
        )
    return "\n".join(lines) + "\n"


def report(directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.png`` comparing every run under ``directory``.

    Raises
    ------
    FileNotFoundError
        When ``directory`` holds no ``metrics.json``.
    MissingExtraError
        When matplotlib (the ``plot`` extra) is missing; checked before anything is written.

    """
    check(["matplotlib"], purpose="cifer report draws report.png")
    root = Path(directory)
    runs = find_runs(root)
    if not runs:
        raise FileNotFoundError(
            f"no metrics.json under {root}; point `cifer report` at a `cifer run -m` output "
            "directory (multirun/DATE/TIME)."
        )
    md = root / "report.md"
    md.write_text("# cifer experiment comparison\n\n" + table(runs))
    png = plot_runs({f"{k}: {_label(v)}": v for k, v in runs.items()}, root / "report.png")
    return md, png
