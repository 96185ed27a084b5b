"""The training algorithm shared by the plaintext oracle and the encrypted trainer.

Logistic regression by Nesterov-accelerated gradient *ascent* on the log-likelihood with the
sigmoid in the gradient replaced by its first-order Taylor polynomial at 0, i.e. the log-loss
replaced by its second-order Taylor polynomial (Aono et al., "Scalable and secure logistic
regression via homomorphic encryption", CODASPY 2016); the Nesterov steps follow Kim et al.
(iDASH 2017 / JMIR Med. Inform. 2018):

* ``Z = y' * [1, X]`` with ``y' = 2y - 1``; ``beta = [bias, weight...]``;
* ``g = (lr / n) * Z^T sigma1(-Z v)``;  ``beta+ = v + g``;
  ``v+ = (1 - eta_k) beta+ + eta_k beta``;
* ``sigma1(x) = 1/2 + x/4``; ``eta_k = (1 - lambda_k) / lambda_{k+1}`` with
  ``lambda_1 = 1`` (FISTA).

Why not Kim et al.'s degree-3 fit ``0.5 + 0.15012 x - 0.001593 x^3``: its cubic term is
negative, so the loss it is the gradient of is concave beyond ``|x| ~ 5.6``; once a row's
score passes about 10 (a nearly separable data set after a dozen iterations, or a default-
initialised model on raw rows at once) the gradient grows the score further and training
diverges to the minority-class share (0.37 on breast cancer). The quadratic loss is convex:
Nesterov's method converges from any start for ``lr < (4/3) / (L / 4)`` with ``L`` the
largest eigenvalue of ``Z^T Z / n``, at most its trace ``d + 1`` for standardized features,
which :func:`default_learning_rate` uses. Its minimiser is the least-squares classifier, within a
point of scikit-learn's ``LogisticRegression`` on breast cancer and wine.

Each encrypted iteration costs two multiplicative levels (see :mod:`.encrypted`), so the
CKKS parameters are chosen from the number of iterations; more iterations go through the
key holder's refresh.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from cifer_flwr.crypto.linalg import estimate_public_key_bytes
from cifer_flwr.crypto.params import CkksParams, for_depth
from cifer_flwr.exceptions import ConfigError, FeatureMismatchError, UnsupportedOperationError
from cifer_flwr.securetrain.data import Dataset, Scaler, signed_design
from cifer_flwr.securetrain.model import Classifier, LogisticModel, OneVsRestModel, fold_scaler

__all__ = [
    "DEFAULT_ITERATIONS",
    "LR_TIMES_CURVATURE",
    "check_training_settings",
    "LEVELS_PER_ITERATION",
    "MAX_PUBLIC_KEY_BYTES",
    "SCALE_BITS",
    "SIGMOID_COEFFS",
    "START_SCORE_LIMIT",
    "default_learning_rate",
    "depth_for",
    "iterations_for_depth",
    "max_iterations",
    "max_row_norm",
    "more_depth",
    "nesterov_etas",
    "norm_bound",
    "params_for_iterations",
    "period_for",
    "sigmoid_poly",
    "start_shrink",
    "train_plaintext",
]

#: ``(a0, a1)`` of ``sigmoid(x) ~ a0 + a1 x`` (first-order Taylor polynomial at 0).
SIGMOID_COEFFS: tuple[float, float] = (0.5, 0.25)
#: Multiplicative levels one encrypted iteration uses.
LEVELS_PER_ITERATION = 2
#: log2 of the CKKS scale; 35 bits keep sums over hundreds of samples accurate to ~1e-4.
SCALE_BITS = 35
#: Iterations a new key is made for (and ``train`` runs): 3 (depth 6) keep the key at
#: N=16384 with 8 primes (about 55-77 MB seeded); more iterations go through the key
#: holder's refresh (``cifer securetrain refresh``), which restores every level.
DEFAULT_ITERATIONS = 3
#: ``lr * L`` of the default step, with ``L <= a1 (d + 1)`` the curvature bound of
#: standardized data. Nesterov's method on a quadratic is stable for
#: ``lr * lambda < 2 (1 + beta) / (1 + 2 beta)``, at least 4/3 for every momentum
#: ``beta < 1``; 1.25 stays below it for any number of iterations per round.
LR_TIMES_CURVATURE = 1.25
#: Largest public key (relinearization + Galois keys) cifer will create: 2 GiB.
MAX_PUBLIC_KEY_BYTES = 2 * 1024**3
#: Largest score ``|[1, x] . beta|`` a starting model may reach on the training rows. The
#: approximation ``1/2 + x/4`` of the sigmoid is close only for ``|x|`` up to a few units; a
#: default-initialised ``nn.Linear(30, 1)`` scores up to +-420 on raw breast-cancer rows, so
#: its first gradients would be those of a far-off quadratic, and a few iterations would not
#: undo them (with Kim et al.'s cubic the same start diverged: 0.08 accuracy). A start that
#: may score more is shrunk toward zero by a positive factor, which keeps its predictions
#: (the sign of every score) unchanged.
START_SCORE_LIMIT = 4.0


def norm_bound(model: Classifier) -> float:
    """Public bound on a model's size: the power of two at or above its largest L2 norm.

    The norm is that of ``[bias, weight...]``, the largest over one-vs-rest blocks; 0 for a
    zero model. The key holder publishes it with an encrypted model (docs/design.md §4.6), so
    a trainer can check the start fits the sigmoid approximation; rounding up to a power of
    two reveals the magnitude only to within a factor of two.
    """
    vectors = (
        [model.to_vector()]
        if isinstance(model, LogisticModel)
        else [m.to_vector() for m in model.models]
    )
    norm = max(float(np.linalg.norm(v)) for v in vectors)
    if norm == 0.0:
        return 0.0
    return float(2.0 ** math.ceil(math.log2(norm)))


def max_row_norm(x: npt.ArrayLike) -> float:
    """Largest L2 norm of a row ``[1, x_i]`` (what bounds ``|[1, x_i] . beta|``)."""
    arr = np.asarray(x, dtype=np.float64)
    return float(np.sqrt(1.0 + np.max(np.sum(arr * arr, axis=1), initial=0.0)))


def start_shrink(bound: float, row_norm: float) -> float:
    """Factor in (0, 1] that keeps a start's scores within :data:`START_SCORE_LIMIT`.

    By Cauchy-Schwarz, a start of norm at most ``bound`` scores at most ``bound * row_norm``
    on rows of norm at most ``row_norm``; the factor is 1 when that is already within the
    limit, else ``START_SCORE_LIMIT / (bound * row_norm)``.
    """
    reach = bound * row_norm
    return 1.0 if reach <= START_SCORE_LIMIT else START_SCORE_LIMIT / reach


def sigmoid_poly(x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The sigmoid approximation ``1/2 + x/4`` training uses (plaintext)."""
    a0, a1 = SIGMOID_COEFFS
    t = np.asarray(x, dtype=np.float64)
    return np.asarray(a0 + a1 * t, dtype=np.float64)


def default_learning_rate(num_features: int) -> float:
    """Step size for ``num_features`` standardized features: ``1.25 / (a1 (d + 1))``.

    The curvature of the (quadratic) training loss is at most ``a1`` times the trace of
    ``Z^T Z / n``, which is ``d + 1`` for standardized columns; see
    :data:`LR_TIMES_CURVATURE` (docs/design.md §4.6). Breast cancer (30 features): 0.16;
    wine (13): 0.36.
    """
    if num_features < 1:
        raise ConfigError(f"num_features must be at least 1, got {num_features}.")
    return LR_TIMES_CURVATURE / (SIGMOID_COEFFS[1] * (num_features + 1))


def nesterov_etas(iterations: int) -> list[float]:
    """Momentum weights ``eta_k`` of the iterations (``eta_0 = 0``, then negative)."""
    lam = 1.0
    etas = []
    for _ in range(iterations):
        nxt = (1.0 + math.sqrt(1.0 + 4.0 * lam * lam)) / 2.0
        etas.append((1.0 - lam) / nxt)
        lam = nxt
    return etas


def train_plaintext(
    dataset: Dataset,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    learning_rate: float | None = None,
    init: Classifier | None = None,
    standardize: bool = False,
    shrink_start: bool = True,
    on_iteration: Callable[[int], None] | None = None,
) -> Classifier:
    """Train with the exact algorithm of the encrypted trainer, in plaintext (the oracle).

    Parameters
    ----------
    dataset : Dataset
        Features and labels; more than two classes train one-vs-rest.
    iterations : int
        Nesterov iterations.
    learning_rate : float, optional
        Step size ``lr`` (the gradient is averaged over samples);
        :func:`default_learning_rate` of the feature count by default.
    init : LogisticModel or OneVsRestModel, optional
        Starting model (raw coordinates); zeros by default. A start whose scores on these
        rows may exceed :data:`START_SCORE_LIMIT` is shrunk first (:func:`start_shrink`),
        exactly as the encrypted trainer does on plaintext rows (scenario 2).
    shrink_start : bool
        ``False`` mirrors training on an encrypted dataset (scenario 1), where the trainer
        cannot see the rows and a start can only be zeros or a model trained (and
        refreshed) on the same data, so it is never shrunk.
    standardize : bool
        Train on standardized features and fold the scaler back (what securetrain does), so
        the model works on raw rows.
    on_iteration : callable, optional
        Called with the iteration index after each iteration.

    """
    if learning_rate is None:
        learning_rate = default_learning_rate(dataset.num_features)
    check_training_settings(iterations, learning_rate)
    scaler = Scaler.fit(dataset.X) if standardize else None
    data = dataset if scaler is None else scaler.transform(dataset)
    starts: list[LogisticModel | None]
    if init is None:
        starts = [None] * dataset.num_outputs
    elif isinstance(init, LogisticModel):
        starts = [init]
    else:
        starts = list(init.models)
    if len(starts) != dataset.num_outputs:
        raise FeatureMismatchError(
            f"the model has {len(starts)} outputs but the data needs {dataset.num_outputs}."
        )
    if init is not None and shrink_start:
        shrink = start_shrink(norm_bound(init), max_row_norm(dataset.X))
        starts = [None if m is None else _shrunk(m, shrink) for m in starts]
    if scaler is not None:
        starts = [None if m is None else _unfold(m, scaler) for m in starts]
    positives = [1] if dataset.num_outputs == 1 else list(range(dataset.num_classes))
    models = [
        _train_binary(data, k, iterations, learning_rate, start, on_iteration)
        for k, start in zip(positives, starts, strict=True)
    ]
    model: Classifier = (
        models[0] if len(models) == 1 else OneVsRestModel(tuple(models), dataset.classes)
    )
    return model if scaler is None else fold_scaler(model, scaler)


def _shrunk(model: LogisticModel, factor: float) -> LogisticModel:
    if factor == 1.0:
        return model
    return LogisticModel(model.weight * factor, float(model.bias) * factor)


def _unfold(model: LogisticModel, scaler: Scaler) -> LogisticModel:
    weight, bias = scaler.unfold(model.weight, model.bias)
    return LogisticModel(weight, float(bias))


def _train_binary(
    dataset: Dataset,
    positive: int,
    iterations: int,
    learning_rate: float,
    init: LogisticModel | None,
    on_iteration: Callable[[int], None] | None,
) -> LogisticModel:
    z = signed_design(dataset, positive)
    n = z.shape[0]
    beta = (init or LogisticModel.zeros(dataset.num_features)).to_vector()
    _check_features(beta.size - 1, dataset.num_features)
    v = beta.copy()
    for k, eta in enumerate(nesterov_etas(iterations)):
        s = sigmoid_poly(-(z @ v))
        g = (learning_rate / n) * (z.T @ s)
        new_beta = v + g
        v = (1.0 - eta) * new_beta + eta * beta
        beta = new_beta
        if on_iteration is not None:
            on_iteration(k)
    return LogisticModel.from_vector(beta)


def _check_features(model_features: int, data_features: int) -> None:
    if model_features != data_features:
        raise FeatureMismatchError(
            f"the model has {model_features} features but the data has {data_features}; "
            "train the model on data with the same columns."
        )


def check_training_settings(iterations: int, learning_rate: float) -> None:
    """Refuse fewer than 1 iteration or a learning rate that is not a positive number.

    Cheap: ``cifer securetrain train`` calls it before it loads a (large) key.

    Raises
    ------
    ConfigError
        Naming the value found and what is expected.

    """
    if iterations < 1:
        raise ConfigError(f"--iterations must be at least 1, got {iterations}.")
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ConfigError(f"--learning-rate must be a positive number, got {learning_rate}.")


def depth_for(iterations: int) -> int:
    """Multiplicative depth ``iterations`` encrypted iterations need."""
    return LEVELS_PER_ITERATION * iterations


def iterations_for_depth(depth: int) -> int:
    """How many iterations fit into ``depth`` levels."""
    return depth // LEVELS_PER_ITERATION


def period_for(num_samples: int, slots: int) -> int:
    """Samples per ciphertext period: the next power of two, at most ``slots``."""
    return min(slots, 1 << max(0, math.ceil(math.log2(max(num_samples, 1)))))


def _fits(iterations: int) -> tuple[CkksParams | None, int]:
    try:
        params = for_depth(depth_for(iterations), scale_bits=SCALE_BITS, name=f"train{iterations}")
    except UnsupportedOperationError:
        return None, 0
    size = estimate_public_key_bytes(params, params.slots)
    return (params if size <= MAX_PUBLIC_KEY_BYTES else None), size


def max_iterations() -> int:
    """Largest number of iterations cifer creates keys for (128-bit security, <= 2 GiB key)."""
    k = 1
    while _fits(k + 1)[0] is not None:
        k += 1
    return k


def more_depth(iterations: int) -> str:
    """Advice for a key too shallow for ``iterations``, consistent with :func:`max_iterations`.

    Ends with a full stop; never advises more iterations than any key can hold.
    """
    most = max_iterations()
    if iterations <= most:
        return (
            f"ask the key holder to encrypt again with a key made for it (`--iterations "
            f"{iterations}` on encrypt-dataset / encrypt-model), or train fewer iterations "
            "now and have the key holder run `cifer securetrain refresh` on the result "
            "(decrypt and re-encrypt: every level back), then train again."
        )
    return (
        f"ask the key holder to encrypt again with the deepest key cifer makes (`--iterations "
        f"{most}` on encrypt-dataset / encrypt-model: at most {most} iterations fit a "
        "128-bit-secure key of at most 2 GiB without bootstrapping), or train in rounds: "
        "a few iterations, `cifer securetrain refresh` by the key holder, train again."
    )


def params_for_iterations(iterations: int) -> CkksParams:
    """Smallest 128-bit-secure CKKS parameters for ``iterations`` encrypted iterations.

    Raises
    ------
    UnsupportedOperationError
        When no secure ring holds that depth with a public key of at most 2 GiB; the message
        says how many iterations fit.

    """
    check_training_settings(iterations, 1.0)
    params, size = _fits(iterations)
    if params is None:
        most = max_iterations()
        detail = (
            f"an estimated {size / 1024**3:.1f} GiB public key"
            if size
            else "a ring beyond N=32768 (no 128-bit-secure CKKS parameters exist)"
        )
        raise UnsupportedOperationError(
            f"{iterations} encrypted iterations need multiplicative depth "
            f"{depth_for(iterations)} ({LEVELS_PER_ITERATION} per iteration, no "
            f"bootstrapping), which would take {detail}. At most {most} iterations fit; "
            f"ask for --iterations {most} or fewer, and train in rounds with the key "
            "holder's `cifer securetrain refresh` in between."
        )
    return params
