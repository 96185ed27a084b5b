"""``cifer securetrain ...``: offline encrypted-asset workflows (docs/design.md §4.6)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from cifer_flwr import crypto
from cifer_flwr import securetrain as st
from cifer_flwr import statistics as fstats
from cifer_flwr.cli._common import console, fail, progress
from cifer_flwr.crypto import container
from cifer_flwr.exceptions import CiferError, ConfigError, KeyFileError, NotLinearModelError
from cifer_flwr.securetrain.algorithm import (
    LEVELS_PER_ITERATION,
    check_training_settings,
    period_for,
)
from cifer_flwr.securetrain.encrypted import EncryptedDataset, PlainDesign
from cifer_flwr.securetrain.tensors import read_tensors, write_tensors
from cifer_flwr.securetrain.workflow import (
    TENSORS_SOURCE,
    KeySetup,
    check_encrypted_output,
    check_plain_output,
    decrypt_tensors,
    encrypt_tensors,
    is_federated_model,
    load_training_key,
    prepare_encryption_key,
)

app = typer.Typer(
    pretty_exceptions_show_locals=False,
    help="Encrypted-asset workflows between a data owner and a project owner: encrypt a "
    "dataset or model, train on encrypted data, decrypt the result, evaluate it.",
    no_args_is_help=True,
)

Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="No progress bars (they are drawn only on a terminal anyway)."
    ),
]
Standardize = Annotated[
    bool,
    typer.Option(
        "--standardize/--no-standardize",
        help="Standardize the features on your side first (default); the scaling stays "
        "yours and is folded into the model, which then works on raw rows.",
    ),
]
Force = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]
FeaturesKey = Annotated[
    str | None, typer.Option("--features-key", help="Feature array name in an .npz.")
]
LabelsKey = Annotated[str | None, typer.Option("--labels-key", help="Label array name in an .npz.")]
LabelColumn = Annotated[
    str | None,
    typer.Option("--label-column", help="Label column (name or index) of a .csv / .npy."),
]
KeyName = Annotated[
    str | None,
    typer.Option("--key-name", help="Name of a new key pair: keys/NAME/{public,private}.key."),
]
Iterations = Annotated[
    int,
    typer.Option(
        "--iterations",
        min=1,
        help="Encrypted training iterations the new key must support (2 levels each).",
    ),
]


def _setup_key(quiet: bool, **kwargs: Any) -> KeySetup:
    """:func:`prepare_encryption_key` with a spinner while a new key pair is generated."""
    reuse = kwargs.get("public_key") is not None
    with progress("generating the key pair", None, quiet=quiet or reuse):
        return prepare_encryption_key(**kwargs)


def _advance(advance: Callable[[int], None]) -> Callable[[int, int], None]:
    """A ``(done, total)`` callback driving ``advance(steps)``."""
    seen = [0]

    def callback(done: int, _total: int) -> None:
        advance(done - seen[0])
        seen[0] = done

    return callback


def _load_dataset(
    path: Path, features_key: str | None, labels_key: str | None, label_column: str | None
) -> st.Dataset:
    return st.load_dataset(
        path, features_key=features_key, labels_key=labels_key, label_column=label_column
    )


def _print_keys(setup: KeySetup, shared: Path) -> None:
    key = setup.key
    if setup.created:
        console.print(
            f"created key pair (fingerprint {key.fingerprint}, N={key.params.poly_modulus_degree}"
            f", depth {key.params.depth})",
            highlight=False,
        )
        console.print(
            f"  KEEP   {setup.private_path}  (private key, mode 0600: never send it to anyone)",
            highlight=False,
        )
        console.print(
            f"  SHARE  {setup.public_path}  (public key: give it to the other party)",
            highlight=False,
        )
    else:
        console.print(f"encrypted with key {key.fingerprint}", highlight=False)
    console.print(f"  SHARE  {shared}  (encrypted; only the private key opens it)", highlight=False)


@app.command("encrypt-dataset")
def encrypt_dataset_cmd(
    dataset: Annotated[
        Path, typer.Option("--dataset", help="Dataset to encrypt (.npz, .npy or .csv).")
    ],
    output: Annotated[Path, typer.Option("--output", help="Encrypted dataset to write (.enc).")],
    public_key: Annotated[
        Path | None,
        typer.Option("--public-key", help="Reuse this key instead of creating a pair."),
    ] = None,
    key_name: KeyName = None,
    iterations: Iterations = st.DEFAULT_ITERATIONS,
    standardize: Standardize = True,
    features_key: FeaturesKey = None,
    labels_key: LabelsKey = None,
    label_column: LabelColumn = None,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Encrypt a dataset (features on any scale, two or more classes) for training by someone else.

    The features are standardized on your side first; the scaling travels only encrypted
    under your key and is folded into the model you decrypt. More than two classes train
    one model per class (one-vs-rest). Creates a key pair under ./keys/ unless --public-key
    is given.

    Example: cifer securetrain encrypt-dataset --dataset ./alice/prj1_alice_data.npz
    --output ./alice/encrypted_prj1_alice_data.enc
    """
    try:
        out = check_encrypted_output(output, force=force, dataset=True)
        data = _load_dataset(dataset, features_key, labels_key, label_column)
        setup = _setup_key(
            quiet,
            public_key=public_key,
            key_name=key_name,
            iterations=iterations,
            num_samples=data.num_samples,
        )
        period = period_for(data.num_samples, setup.key.params.slots)
        chunks = -(-data.num_samples // period)
        total = data.num_outputs * (data.num_features + 1) * chunks + int(standardize)
        with progress("encrypting the dataset", total, quiet=quiet) as advance:
            enc = st.encrypt_dataset(
                data, setup.key, standardize=standardize, progress=_advance(advance)
            )
        st.save_encrypted(enc, out)
    except (CiferError, OSError) as exc:
        raise fail(exc) from exc
    classes = "" if data.num_outputs == 1 else f", {data.num_classes} classes (one-vs-rest)"
    scaled = "standardized on your side; " if standardize else ""
    console.print(
        f"encrypted {data.num_samples} samples x {data.num_features} features{classes} "
        f"({scaled}the scaling is encrypted too) -> {out}"
        if standardize
        else f"encrypted {data.num_samples} samples x {data.num_features} features{classes} "
        f"(not standardized) -> {out}",
        highlight=False,
    )
    _print_keys(setup, out)


@app.command("encrypt-model")
def encrypt_model_cmd(
    model: Annotated[
        Path,
        typer.Option(
            "--model", help="Plaintext model (.h5, .keras, .pt state dict, .npz, .safetensors)."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", help="Encrypted model to write (.enc).")],
    public_key: Annotated[
        Path | None,
        typer.Option("--public-key", help="Reuse this key instead of creating a pair."),
    ] = None,
    key_name: KeyName = None,
    iterations: Iterations = st.DEFAULT_ITERATIONS,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Encrypt a model: for training by a data owner who never sees it, or for safekeeping.

    A single linear layer (Keras Dense, torch nn.Linear, .npz weight/bias) is encrypted for
    training (scenario 2); any other model's tensors are encrypted as they are and
    `decrypt-model` restores them exactly. Creates a key pair under ./keys/ unless
    --public-key is given.

    Example: cifer securetrain encrypt-model --model ./bob/prj2_model.h5
    --output ./bob/encrypted_prj2_model.enc
    """
    try:
        out = check_encrypted_output(output, force=force)
        try:
            plain: st.Classifier | None = st.read_model(model)
            tensors = None
        except NotLinearModelError:  # readable, but not one linear layer: store it encrypted
            plain, tensors = None, read_tensors(model)
        setup = _setup_key(
            quiet,
            public_key=public_key,
            key_name=key_name,
            iterations=iterations,
            trainable=plain is not None,
        )
        if plain is not None:
            weights = plain.num_features + 1
            total = weights if isinstance(plain, st.LogisticModel) else weights * plain.num_classes
            with progress("encrypting the weights", total, quiet=quiet) as advance:
                enc = st.encrypt_model(plain, setup.key, progress=_advance(advance))
            st.save_encrypted(enc, out)
            what = f"a logistic model with {plain.num_features} features (trainable)"
        else:
            assert tensors is not None
            with progress("encrypting the tensors", None, quiet=quiet):
                blob = encrypt_tensors(tensors, setup.key)
            container.write_file_atomic(out, blob)
            what = f"a model of {len(tensors.arrays)} tensors (stored encrypted, not trainable)"
    except (CiferError, OSError) as exc:
        raise fail(exc) from exc
    console.print(f"encrypted {what} -> {out}", highlight=False)
    _print_keys(setup, out)


@app.command("train")
def train_cmd(
    public_key: Annotated[
        Path, typer.Option("--public-key", help="The key holder's public key (public.key).")
    ],
    output_model: Annotated[
        Path, typer.Option("--output-model", help="Encrypted trained model to write (.enc).")
    ],
    encrypted_data: Annotated[
        Path | None,
        typer.Option("--encrypted-data", help="Encrypted dataset (scenario 1)."),
    ] = None,
    dataset: Annotated[
        Path | None,
        typer.Option("--dataset", help="Your own plaintext dataset (scenario 2)."),
    ] = None,
    encrypted_model: Annotated[
        Path | None,
        typer.Option("--encrypted-model", help="Encrypted starting model (scenario 2)."),
    ] = None,
    iterations: Annotated[
        int, typer.Option("--iterations", min=1, help="Nesterov gradient iterations.")
    ] = st.DEFAULT_ITERATIONS,
    learning_rate: Annotated[
        float | None,
        typer.Option(
            "--learning-rate",
            help="Gradient step size (default: 1.25 / (0.25 (features + 1)), which converges "
            "for standardized features).",
        ),
    ] = None,
    standardize: Standardize = True,
    features_key: FeaturesKey = None,
    labels_key: LabelsKey = None,
    label_column: LabelColumn = None,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Train logistic regression with encrypted weights, using only a public key.

    Scenario 1: --encrypted-data (the data owner's ciphertexts), weights start at zero.
    Scenario 2: --encrypted-model plus --dataset (your plaintext data, standardized on your
    side and mapped back, so the owner gets a model for raw rows) or --encrypted-data.

    Example: cifer securetrain train --encrypted-data ./alice/encrypted_prj1_alice_data.enc
    --public-key ./keys/alice/public.key --output-model ./bob/prj1_trained_model.enc
    """
    try:
        if (encrypted_data is None) == (dataset is None):
            raise ConfigError(
                "give exactly one of --encrypted-data (ciphertexts from the data owner) and "
                "--dataset (your own plaintext data)."
            )
        if dataset is not None and encrypted_model is None:
            raise ConfigError(
                "training on a plaintext --dataset needs the project owner's "
                "--encrypted-model (scenario 2); with no model to protect, train in plaintext."
            )
        # before a (large) key is read; no --learning-rate: the default of the feature count
        check_training_settings(iterations, 1.0 if learning_rate is None else learning_rate)
        out = check_encrypted_output(output_model, force=force)
        key = load_training_key(public_key)
        design: EncryptedDataset | PlainDesign
        if encrypted_data is not None:
            design = st.load_encrypted_dataset(encrypted_data, key)
        else:
            assert dataset is not None
            design = st.plain_design(
                _load_dataset(dataset, features_key, labels_key, label_column),
                key.params,
                standardize=standardize,
            )
        if encrypted_model is not None:
            start = st.load_encrypted_model(encrypted_model, key)
        else:
            assert isinstance(design, EncryptedDataset)
            start = st.encrypt_model(_zeros(design), key, scaler=design.scaler)
        d1 = design.num_features + 1
        total = design.outputs * iterations * d1
        notices: list[str] = []
        with progress("training (encrypted weights)", total, quiet=quiet) as advance:
            trained = st.train_encrypted(
                design,
                start,
                iterations=iterations,
                learning_rate=learning_rate,
                on_step=lambda _k, done, _t: advance(1) if done else None,
                on_notice=notices.append,
            )
        st.save_encrypted(trained, out)
    except (CiferError, OSError) as exc:
        raise fail(exc) from exc
    for notice in notices:
        console.print(f"note: {notice}", highlight=False)
    classes = "" if design.outputs == 1 else f", {design.outputs} one-vs-rest models"
    console.print(
        f"trained {iterations} iterations on {design.num_samples} samples{classes} "
        f"({'encrypted' if encrypted_data else 'plaintext'} data, encrypted weights) -> {out}",
        highlight=False,
    )
    console.print(
        "accuracy is available only after decryption: the key holder runs "
        f"`cifer securetrain decrypt-model --input-model {out} --private-key PRIVATE.key "
        "--output-model model.h5 --dataset DATA`.",
        highlight=False,
    )
    console.print(f"  SHARE  {out}  (send it back to the key holder)", highlight=False)


def _zeros(design: EncryptedDataset) -> st.Classifier:
    if design.outputs == 1:
        return st.LogisticModel.zeros(design.num_features)
    return st.OneVsRestModel.from_matrix(
        [[0.0] * design.num_features] * design.outputs, [0.0] * design.outputs
    )


def _container_source(path: Path) -> str | None:
    """``meta.source`` of an encrypted-arrays container (public header only)."""
    try:
        header, _ = container.read_file(path)
    except CiferError:
        return None
    meta = header.get("meta")
    return meta.get("source") if isinstance(meta, dict) else None


@app.command("decrypt-model")
def decrypt_model_cmd(
    input_model: Annotated[Path, typer.Option("--input-model", help="Encrypted model (.enc).")],
    private_key: Annotated[
        Path, typer.Option("--private-key", help="Your private key (private.key).")
    ],
    output_model: Annotated[
        Path,
        typer.Option(
            "--output-model",
            help="Plaintext model to write (.h5, .keras, .pt, .npz, .safetensors).",
        ),
    ],
    dataset: Annotated[
        Path | None,
        typer.Option("--dataset", help="Also print the model's accuracy on this dataset."),
    ] = None,
    features_key: FeaturesKey = None,
    labels_key: LabelsKey = None,
    label_column: LabelColumn = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON line (metrics with --dataset).")
    ] = False,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Decrypt a model encrypted under your key and save it (.h5, .keras, .pt, .npz, .safetensors).

    A trained logistic model comes back with the data owner's scaling folded in, so it
    works on raw rows; --dataset prints its accuracy. A model encrypted by `encrypt-model`
    as tensors, or the encrypted global model a federated strategy saved (save_path=),
    comes back tensor by tensor (FedOpt's pending server step applied first).

    Example: cifer securetrain decrypt-model --input-model ./bob/encrypted_prj2_trained_model.enc
    --private-key ./keys/bob/private.key --output-model ./bob/final_model_decrypted.h5
    """
    metrics: dict[str, float] | None = None
    try:
        out = check_plain_output(output_model, force=force)
        any_key = crypto.load_private_key(private_key)  # CKKS, packed or Paillier
        if is_federated_model(input_model):
            if dataset is not None:
                raise ConfigError(
                    "--dataset evaluates logistic models trained by securetrain; this file "
                    "holds a model's tensors, evaluate them with your own framework."
                )
            stored = _container_source(input_model) == TENSORS_SOURCE
            with progress("decrypting", None, quiet=quiet or as_json):
                tensors = decrypt_tensors(input_model, any_key)
                stats = fstats.saved_scaling(input_model, any_key)
            scaling = ""
            if stats is not None:  # the federation's scaling (docs/design.md §4.10)
                raw_model = fstats.fold_first_layer(tensors.arrays, stats)
                if raw_model is not None:
                    tensors = replace(tensors, arrays=raw_model)
                    scaling = "the federation's scaling folded in: it works on raw rows"
                else:
                    side = fstats.write_plain_scaling(out, stats)
                    scaling = f"it expects (x - mean) / std, mean and std in {side}"
            write_tensors(tensors, out)
            names = list(tensors.arrays)
            kind = "model" if stored else "federated model"
            summary = (
                f"decrypted a {kind} ({len(names)} arrays: {', '.join(names[:4])}"
                f"{'...' if len(names) > 4 else ''}) -> {out}"
                + (f" ({scaling})" if scaling else "")
            )
            if as_json:
                print(json.dumps({"output": str(out), "tensors": len(names), "scaling": scaling}))
            else:
                console.print(summary, highlight=False)
            return
        key = _ckks_key(any_key, private_key, "a securetrain logistic model")
        enc = st.load_encrypted_model(input_model, key)
        with progress("decrypting", None, quiet=quiet or as_json):
            model = st.decrypt_model(enc, key)
        if dataset is not None:
            metrics = st.evaluate(
                model, _load_dataset(dataset, features_key, labels_key, label_column)
            )
        st.write_model(model, out)
    except (CiferError, OSError) as exc:
        raise fail(exc) from exc
    if as_json:
        print(json.dumps({"output": str(out), **(metrics or {})}))
        return
    folded = " (the data owner's scaling folded in: it works on raw rows)" if enc.scaler else ""
    console.print(
        f"decrypted a model with {model.num_features} features{folded} -> {out}",
        highlight=False,
    )
    if metrics is not None:
        _print_metrics(metrics, f"on {dataset}")
    else:
        console.print(
            f"  accuracy: `cifer securetrain evaluate --model {out} --dataset DATA`, or "
            "decrypt with --dataset DATA.",
            highlight=False,
        )


@app.command("refresh")
def refresh_cmd(
    input_model: Annotated[
        Path, typer.Option("--input-model", help="Encrypted model the trainer sent back (.enc).")
    ],
    private_key: Annotated[
        Path, typer.Option("--private-key", help="Your private key (private.key).")
    ],
    output_model: Annotated[
        Path, typer.Option("--output-model", help="Refreshed encrypted model to write (.enc).")
    ],
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Key holder: decrypt and re-encrypt a trained model so training can continue.

    Without bootstrapping a key holds only a few encrypted iterations. You may see the
    model anyway, so you decrypt it and encrypt it afresh (all levels back, a new public
    size bound); send the result to the trainer, who runs `train --encrypted-model` again
    with the same data. Repeat until the model stops improving.

    Example: cifer securetrain refresh --input-model ./bob/prj1_trained_model.enc
    --private-key ./keys/private.key --output-model ./alice/prj1_refreshed.enc
    """
    try:
        out = check_encrypted_output(output_model, force=force)
        key = _ckks_key(crypto.load_private_key(private_key), private_key, "refresh")
        enc = st.load_encrypted_model(input_model, key)
        total = len(enc.coefficients)
        with progress("re-encrypting the weights", total, quiet=quiet) as advance:
            fresh = st.refresh_model(enc, key, progress=_advance(advance))
        st.save_encrypted(fresh, out)
    except (CiferError, OSError) as exc:
        raise fail(exc) from exc
    console.print(
        f"refreshed {total} coefficients (levels used {enc.level} -> 0; up to "
        f"{key.params.depth // LEVELS_PER_ITERATION} more iterations) -> {out}",
        highlight=False,
    )
    console.print(
        f"  SHARE  {out}  (send it to the trainer: train --encrypted-model {out} ...)",
        highlight=False,
    )


def _ckks_key(key: crypto.AnyKey, path: Path, what: str) -> crypto.Key:
    """The CKKS key encrypted training needs; a Paillier key is refused with the fix."""
    if isinstance(key, crypto.Key):
        return key
    raise KeyFileError(
        f"{path} is a Paillier key, but {what} is encrypted under CKKS (encrypted training "
        "needs ciphertext products, which Paillier lacks); use the CKKS private.key that "
        "encrypt-dataset / encrypt-model created."
    )


def _print_metrics(metrics: dict[str, float], where: str = "") -> None:
    if where:
        console.print(where, highlight=False)
    for name, value in metrics.items():
        console.print(f"{name:<10} {value:.4f}" if name != "samples" else f"{name:<10} {value:.0f}")


@app.command("evaluate")
def evaluate_cmd(
    model: Annotated[
        Path,
        typer.Option("--model", help="Plaintext model (.h5, .keras, .pt, .npz, .safetensors)."),
    ],
    dataset: Annotated[Path, typer.Option("--dataset", help="Dataset (.npz, .npy, .csv).")],
    features_key: FeaturesKey = None,
    labels_key: LabelsKey = None,
    label_column: LabelColumn = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line.")] = False,
) -> None:
    """Accuracy, ROC AUC and log-loss of a decrypted model on a plaintext dataset.

    Example: cifer securetrain evaluate --model ./alice/final_model.h5
    --dataset ./alice/prj1_alice_data.npz
    """
    try:
        if model.suffix.lower() == ".enc":
            raise ConfigError(
                f"{model} is encrypted; decrypt it first with `cifer securetrain decrypt-model`."
            )
        metrics = st.evaluate(
            st.read_model(model), _load_dataset(dataset, features_key, labels_key, label_column)
        )
    except (CiferError, OSError) as exc:
        raise fail(exc) from exc
    if as_json:
        print(json.dumps(metrics))
        return
    _print_metrics(metrics)
