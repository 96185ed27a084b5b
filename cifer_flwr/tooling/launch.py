"""Hydra entry point behind ``cifer run``: compose, validate, deploy on 127.0.0.1, collect.

It sits in tooling, above the experiment harness it composes and below the CLI, because it
brings up local deployments (:mod:`cifer_flwr.tooling.federation`).

Each experiment writes into Hydra's output directory: ``config.yaml`` (the resolved,
validated config; Hydra's own copy is in ``.hydra/``), ``results.json`` (per round: accuracy,
loss, bytes, encryption and aggregation seconds; ``metrics.json`` links to it), ``metrics.png``
and, for encrypted
centralized runs, ``final_model.enc``. Key pairs go to ``keys/`` (private key 0600).

An output directory belongs to one run: it is claimed with an exclusive lock
(:func:`claim_output_dir`, ``flock`` on ``.cifer-run.lock``) before anything is written into
it, even before Hydra writes ``.hydra/``, and held for the run's life. A second run into a
claimed directory stops at once and touches nothing; a new run (without ``resume=true``)
into a directory that already holds a run's key pair or checkpoint is refused too, because
regenerating ``keys/`` would make that run's ``final_model.enc`` and checkpoint undecryptable
(docs/design.md §7).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import itertools
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from cifer_flwr import crypto, experiments
from cifer_flwr.exceptions import CiferError, ConfigError, OutputPathError
from cifer_flwr.experiments.config import (
    CONF_DIR,
    ExperimentConfig,
    compose,
    overrides_to_string,
    validate,
)
from cifer_flwr.experiments.report import plot_or_note

if TYPE_CHECKING:
    from cifer_flwr.tooling.federation import Federation

__all__ = [
    "APP_DIR",
    "LOCK_FILE",
    "RESULTS_FILE",
    "check_deployable",
    "describe_run",
    "done_line",
    "claim_output_dir",
    "expand_sweep",
    "hydra_entry",
    "run_experiment",
    "validate_sweep",
]

log = logging.getLogger(__name__)

#: The generic Flower app submitted with ``flwr run`` (the harness's ``experiments/app``).
APP_DIR = Path(experiments.__file__).resolve().parent / "app"

Progress = Callable[[str], None]


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Expand Hydra sweep overrides (``a=1,2 b=x,y``) into every combination."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for o in parsed:
        key = o.get_key_element()
        values = (
            list(o.sweep_string_iterator())
            if o.is_sweep_override()
            else [o.get_value_element_as_str()]
        )
        choices.append([f"{key}={v}" for v in values])
    return [list(combo) for combo in itertools.product(*choices)]


def validate_sweep(overrides: list[str], multirun: bool) -> list[ExperimentConfig]:
    """Compose and validate every experiment a command line asks for, before anything starts.

    Raises
    ------
    ConfigError
        For the first invalid combination, naming the overrides and the valid choices.

    """
    combos = expand_sweep(overrides) if multirun else [overrides]
    out = []
    for combo in combos:
        try:
            exp = compose(combo)
            check_deployable(exp)
        except ConfigError as exc:
            raise ConfigError(f"{' '.join(combo) or '(defaults)'}: {exc}") from None
        out.append(exp)
    return out


def check_deployable(exp: ExperimentConfig) -> None:
    """Check that ``cifer run`` can deploy ``exp`` here, before any key pair or process.

    The config itself (including ``federation.tls`` / ``federation.auth`` in a simulation)
    is checked by :func:`~cifer_flwr.experiments.config.validate`; this adds what depends on
    the installation and this machine: ``task.dataset_path`` must name an existing dataset
    file, and ``federation=simulation`` runs in Flower's simulation engine
    (docs/design.md §7.1) and needs Ray, the ``simulation`` extra.

    Raises
    ------
    DatasetError
        ``task.dataset_path`` is missing, a directory or of an unknown format.
    MissingExtraError
        Ray is not installed; names the ``simulation`` extra's install command.

    """
    if exp.task.dataset_path:  # a typo fails here, not after keys and federation (issue 22)
        from cifer_flwr.apps.data import check_dataset_file

        check_dataset_file(exp.task.dataset_path)
    if exp.federation.kind.value != "simulation":
        return
    from cifer_flwr.tooling.federation.simulation import require_ray

    require_ray()


@contextlib.contextmanager
def _federation(
    exp: ExperimentConfig,
    directory: Path,
    private: Path | None,
    public: Path | None,
    say: Progress,
) -> Iterator[Federation]:
    """A local deployment or Flower's simulation runtime on 127.0.0.1, as ``exp`` says.

    Stopped on the way out, every process by PID with its descendants (Ray's included; a
    simulation's Ray temp directory is removed too).
    """
    nodes = exp.federation.nodes
    if exp.federation.kind.value == "simulation":
        from cifer_flwr.tooling.federation.simulation import simulation

        say(f"starting Flower's simulation runtime (Ray) with {nodes} virtual SuperNodes")
        sim = simulation(directory, nodes=nodes, private_key=private, public_key=public)
        with sim as fed:
            try:
                yield fed
            finally:
                say("stopping the federation")
        return
    from cifer_flwr.tooling.federation import up

    say(f"starting a SuperLink and {nodes} SuperNodes on 127.0.0.1")
    fed = up(
        directory,
        nodes=nodes,
        tls=exp.federation.tls,
        auth=exp.federation.auth,
        private_key=private,
        public_key=public,
    )
    try:
        yield fed
    finally:
        say("stopping the federation")
        fed.stop()


#: Results file of a run inside its output directory; the checkpoint sits next to it.
RESULTS_FILE = "results.json"
#: The lock file that claims an output directory for one run (:func:`claim_output_dir`).
LOCK_FILE = ".cifer-run.lock"

#: Output directories this process holds (resolved path -> lock descriptor): a run's own
#: nested claims (hydra_entry, then run_experiment on the same directory) do not conflict.
_CLAIMED: dict[Path, int] = {}


@contextlib.contextmanager
def claim_output_dir(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive lock on ``directory`` for one run, before anything is written in it.

    The directory is created if needed and ``LOCK_FILE`` opened inside it (never through a
    symlink, close-on-exec so the federation's processes do not inherit it) and locked with
    ``flock(LOCK_EX | LOCK_NB)``; the lock holds the run's PID and goes with the process
    (the kernel releases it even after ``SIGKILL``, so a killed run can be resumed). Nested
    claims of the same directory by the same process are free.

    Raises
    ------
    OutputPathError
        Another run holds the directory; names its PID. Nothing was written.

    """
    path = Path(directory).resolve()
    if path in _CLAIMED:
        yield path
        return
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise OutputPathError(
            f"cannot open the run lock {lock} ({exc.strerror}); expected a regular file cifer "
            "can create; choose another output directory (hydra.run.dir=...)."
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise OutputPathError(
            f"output directory {path} is in use by another cifer run (PID {holder}, holding "
            f"{LOCK_FILE}); expected a directory no run is using. Nothing was written: wait "
            "for that run to finish, or choose another output directory (hydra.run.dir=...)."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _CLAIMED[path] = fd
    try:
        yield path
    finally:
        del _CLAIMED[path]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)


def _check_fresh(exp: ExperimentConfig, out_dir: Path) -> None:
    """Refuse a new run (no ``resume``) into a directory that holds a run's key pair.

    Regenerating ``keys/`` there would orphan that run's ``final_model.enc`` and checkpoint
    (encrypted under the old key).

    Raises
    ------
    OutputPathError
        ``out_dir`` holds a key pair or a checkpoint and ``resume`` is false.

    """
    from cifer_flwr.apps.runconfig import CHECKPOINT_SUFFIX

    if exp.resume:
        return
    found = [
        p
        for p in (
            out_dir / "keys" / crypto.PRIVATE_KEY_FILE,
            out_dir / "keys" / crypto.PUBLIC_KEY_FILE,
            (out_dir / RESULTS_FILE).with_suffix(CHECKPOINT_SUFFIX),
        )
        if os.path.lexists(p)
    ]
    if found:
        raise OutputPathError(
            f"output directory {out_dir} already holds {found[0].relative_to(out_dir)} of an "
            "earlier run; expected a new directory. A new run would regenerate its key pair "
            "and make that run's final_model.enc and checkpoint undecryptable: choose another "
            "hydra.run.dir, or continue that run with resume=true."
        )


def _check_resumable(exp: ExperimentConfig, out_dir: Path) -> None:
    """Refuse ``resume=true`` unless ``out_dir`` holds a killed run of the same experiment.

    Raises
    ------
    ConfigError
        No checkpoint or key pair in ``out_dir``, or its config differs from ``exp``.

    """
    from cifer_flwr.apps.runconfig import CHECKPOINT_SUFFIX

    ckpt = (out_dir / RESULTS_FILE).with_suffix(CHECKPOINT_SUFFIX)
    fix = (
        "run `cifer run <the killed run's overrides> resume=true "
        "hydra.run.dir=<its output directory>`"
    )
    if not ckpt.is_file():
        raise ConfigError(
            f"resume=true but {out_dir} holds no checkpoint ({ckpt.name} missing): a new "
            f"output directory has nothing to resume; {fix}."
        )
    if not (out_dir / "keys" / crypto.PUBLIC_KEY_FILE).is_file():
        raise ConfigError(f"resume=true but {out_dir / 'keys'} holds no key pair; {fix}.")
    finished = _finished_rounds(out_dir / RESULTS_FILE)
    if finished is not None:
        raise ConfigError(
            f"resume=true but the run in {out_dir} finished all its {finished} rounds "
            "(results status ok): nothing to resume; expected a killed run. Start a new run "
            "(a new hydra.run.dir) for more rounds."
        )
    saved = out_dir / "config.yaml"
    if saved.is_file():
        loaded = OmegaConf.load(saved)
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{saved} is not a mapping; {fix}.")
        before = validate(loaded)
        before.resume = exp.resume
        if before != exp:
            old, new = overrides_to_string(before).split(), overrides_to_string(exp).split()
            diff = sorted(set(new) - set(old))
            raise ConfigError(
                f"resume=true but the experiment differs from the killed run in {out_dir} "
                f"({', '.join(diff)}); resume with the same overrides."
            )


def _finished_rounds(results: Path) -> int | None:
    """Rounds of a run whose results file says it finished (status ``ok``), else ``None``."""
    try:
        data = json.loads(results.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("status") != "ok":
        return None
    rounds = data.get("rounds")
    return len(rounds) if isinstance(rounds, list) else 0


def describe_run(exp: ExperimentConfig) -> str:
    """What ``cifer run`` says it runs: strategy and topology (p2p has no strategy)."""
    if exp.topology.name.value == "p2p":
        return f"p2p gossip on a {exp.topology.graph.value} graph, no aggregating server"
    return f"{exp.strategy.name}, {exp.topology.name.value}"


def done_line(results: dict[str, Any], out_dir: Path) -> str:
    """The last line of a finished experiment: its final accuracy (4 digits) and outputs."""
    last = results["rounds"][-1] if results.get("rounds") else None
    if last is None:
        return f"done: no round completed; outputs in {out_dir}"
    acc = last.get("accuracy")
    shown = "not measured" if acc is None else f"{float(acc):.4f}"
    return f"done: final accuracy {shown}; outputs in {out_dir}"


def _link_metrics(out_dir: Path) -> None:
    """``metrics.json``: the name ``cifer report`` reads, a link to the one results file.

    The ServerApp writes ``results.json`` (the checkpoint sits next to it); a second copy of
    the same bytes only left two files to keep apart (issue 22).
    """
    metrics = out_dir / "metrics.json"
    metrics.unlink(missing_ok=True)
    metrics.symlink_to(RESULTS_FILE)


def run_experiment(
    exp: ExperimentConfig, out_dir: Path, progress: Progress | None = None
) -> dict[str, Any]:
    """Run one experiment and write its outputs into ``out_dir``.

    On a fresh local deployment (``federation=local``) or in Flower's simulation runtime
    (``federation=simulation``, docs/design.md §7.1), both on 127.0.0.1 and stopped afterwards.
    ``out_dir`` is claimed first (:func:`claim_output_dir`).

    Raises
    ------
    OutputPathError
        Another run holds ``out_dir``, or (without ``resume``) it holds an earlier run's key
        pair or checkpoint. Nothing was written.
    CiferError
        The run failed.

    """
    say = progress or (lambda msg: log.info("%s", msg))
    check_deployable(exp)  # before any key pair or process (issue 12)
    if exp.resume:
        _check_resumable(exp, out_dir)
    # the directory is this run's before anything is written into it (issue 18)
    with claim_output_dir(out_dir):
        _check_fresh(exp, out_dir)
        return _run_claimed(exp, out_dir, say)


def _run_claimed(exp: ExperimentConfig, out_dir: Path, say: Progress) -> dict[str, Any]:
    """:func:`run_experiment` in an output directory this process has claimed."""
    from cifer_flwr.tooling.federation.runs import run_app

    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(exp)))
    private = public = None
    if exp.resume:
        say("resuming: reusing the run's CKKS key pair (the checkpoint is encrypted under it)")
        private = out_dir / "keys" / crypto.PRIVATE_KEY_FILE
        public = out_dir / "keys" / crypto.PUBLIC_KEY_FILE
    elif exp.encryption.enabled:
        say(f"generating a key pair (preset {exp.encryption.preset})")
        # never force: a key pair here belongs to another run (_check_fresh refused it)
        private, public = crypto.generate_key_pair(exp.encryption.preset, out_dir / "keys")
    with _federation(exp, out_dir / "federation", private, public, say) as fed:
        run_config: dict[str, str | bool] = {
            "hydra-overrides": overrides_to_string(exp),
            "resume": exp.resume,
        }
        if public is not None:
            run_config["public-key"] = str(public.resolve())
            if exp.topology.name.value == "centralized":
                run_config["save-path"] = str((out_dir / "final_model.enc").resolve())
        say(f"running {exp.num_rounds} rounds ({describe_run(exp)})")
        outcome = run_app(
            fed,
            APP_DIR,
            run_config,
            timeout=exp.federation.timeout,
            results_path=out_dir / RESULTS_FILE,
            log_path=out_dir / "run.log",
            on_round=lambda line: say(line.removeprefix("[cifer] ")),  # per round, as it ends
        )
    if not outcome.completed:
        raise CiferError(
            f"run {outcome.run_id} ended {outcome.status}: {'; '.join(outcome.errors)} "
            f"(log: {outcome.log_path})"
        )
    for problem in outcome.errors:  # the run went on without these clients; say so
        say(f"warning: {problem}")
    results = dict(outcome.results or {})
    _link_metrics(out_dir)
    plot_or_note({"this run": results}, out_dir / "metrics.png", say)  # no plot extra: a note
    shutil.rmtree(out_dir / "federation" / "home", ignore_errors=True)
    return results


def _say(msg: str) -> None:
    print(f"[cifer] {msg}", flush=True)


def _hydra_main(failures: list[str], on_done: Callable[[Path, bool], None] | None = None) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    @hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
    def main(cfg: DictConfig) -> float | None:
        exp = validate(cfg)
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            results = run_experiment(exp, out_dir, progress=_say)
        except CiferError as exc:  # one line, not Hydra's traceback; the sweep goes on
            failures.append(f"{out_dir}: {' '.join(str(exc).split())}")
            _say(f"failed: {' '.join(str(exc).split())}")
            if on_done is not None:
                on_done(out_dir, False)
            return None
        last = results["rounds"][-1] if results.get("rounds") else {}
        _say(done_line(results, out_dir))
        if on_done is not None:
            on_done(out_dir, True)
        acc = last.get("accuracy")
        return None if acc is None else float(acc)

    main()


def hydra_entry(
    overrides: list[str],
    multirun: bool,
    on_done: Callable[[Path, bool], None] | None = None,
) -> None:
    """Validate every requested experiment, then hand the command line to Hydra.

    ``resume=true`` is checked here too, before anything starts: it needs the killed run's
    output directory (``hydra.run.dir=...``; ``hydra.sweep.dir=...`` with ``-m``) holding
    its checkpoint, key pair and the same config. ``on_done(output_dir, ok)`` is called after
    each experiment (the CLI's sweep progress bar). A failed experiment is one line and the
    sweep goes on; then :class:`CiferError` names every failure.
    """
    exps = validate_sweep(overrides, multirun)
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    given = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith(key)]
    if any(e.resume for e in exps):
        if not given:
            raise ConfigError(
                f"resume=true needs the killed run's output directory: add "
                f"{key}<that directory> (a new output directory has no checkpoint)."
            )
        if not multirun:
            _check_resumable(exps[0], Path(given[0]))
    if given:
        out_dir = Path(given[-1])
    else:  # Hydra's default, fixed here so that the directory we lock is the one it uses
        stamp = _dt.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
        out_dir = Path("multirun" if multirun else "outputs") / stamp
        overrides = [*overrides, f"{key}{out_dir}"]
    argv = sys.argv
    failures: list[str] = []
    # claimed before Hydra writes .hydra/ into it, held until every experiment ended
    with claim_output_dir(out_dir) as claimed:
        if not multirun:
            _check_fresh(exps[0], claimed)
        sys.argv = ["cifer run", *(["--multirun"] if multirun else []), *overrides]
        os.environ.setdefault("HYDRA_FULL_ERROR", "0")
        try:
            _hydra_main(failures, on_done)
        finally:
            sys.argv = argv
    if failures:
        raise CiferError(
            f"{len(failures)} of {len(exps)} experiments failed: {'; '.join(failures)}"
        )
