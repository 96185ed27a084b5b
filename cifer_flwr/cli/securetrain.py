"""``cifer securetrain ...``: offline encrypted-asset workflows (docs/design.md §4.6)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from cifer_flwr import securetrain as st
from cifer_flwr.cli._common import console, err_console, fail
from cifer_flwr.crypto.keys import load_private_key
from cifer_flwr.exceptions import CiferError, ConfigError
from cifer_flwr.securetrain.encrypted import EncryptedDataset, PlainDesign
from cifer_flwr.securetrain.model import write_arrays
from cifer_flwr.securetrain.workflow import (
    KeySetup,
    check_encrypted_output,
    check_plain_output,
    decrypt_federated_model,
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

Bar = Callable[[str, int], Callable[[int, int], None]]

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars (for scripts).")]
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
        help="Encrypted training iterations the new key must support (3 levels each).",
    ),
]


@contextmanager
def _bars(quiet: bool) -> Iterator[Bar]:
    """Yield ``bar(description, total)`` returning a ``(done, total)`` progress callback."""
    if quiet:
        yield lambda _d, _t: lambda _done, _total: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
    ) as progress:

        def bar(description: str, total: int) -> Callable[[int, int], None]:
            task = progress.add_task(description, total=total)
            return lambda done, _total: progress.update(task, completed=done)

        yield bar


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
    features_key: FeaturesKey = None,
    labels_key: LabelsKey = None,
    label_column: LabelColumn = None,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Encrypt a dataset (standardized features, binary labels) for training by someone else.

    Creates a key pair under ./keys/ unless --public-key is given.

    Example: cifer securetrain encrypt-dataset --dataset ./alice/prj1_alice_data.npz
    --output ./alice/encrypted_prj1_alice_data.enc
    """
    try:
        out = check_encrypted_output(output, force=force)
        data = _load_dataset(dataset, features_key, labels_key, label_column)
        setup = prepare_encryption_key(
            public_key=public_key,
            key_name=key_name,
            iterations=iterations,
            num_samples=data.num_samples,
        )
        with _bars(quiet) as bar:
            enc = st.encrypt_dataset(
                data, setup.key, progress=bar("encrypting columns", data.num_features + 1)
            )
        st.save_encrypted(enc, out)
    except (CiferError, OSError) as exc:
        raise fail(exc) from exc
    console.print(
        f"encrypted {data.num_samples} samples x {data.num_features} features -> {out}",
        highlight=False,
    )
    _print_keys(setup, out)


@app.command("encrypt-model")
def encrypt_model_cmd(
    model: Annotated[Path, typer.Option("--model", help="Plaintext model (.h5, .pt or .npz).")],
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
    """Encrypt a logistic-regression model so that a data owner can train it without seeing it.

    Creates a key pair under ./keys/ unless --public-key is given.

    Example: cifer securetrain encrypt-model --model ./bob/prj2_model.h5
    --output ./bob/encrypted_prj2_model.enc
    """
    try:
        out = check_encrypted_output(output, force=force)
        plain = st.read_model(model)
        setup = prepare_encryption_key(
            public_key=public_key, key_name=key_name, iterations=iterations
        )
        with _bars(quiet) as bar:
            enc = st.encrypt_model(
                plain, setup.key, progress=bar("encrypting weights", plain.num_features + 1)
            )
        st.save_encrypted(enc, out)
    except (CiferError, OSError) as exc:
        raise fail(exc) from exc
    console.print(f"encrypted a model with {plain.num_features} features -> {out}")
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
        float, typer.Option("--learning-rate", help="Gradient step size.")
    ] = st.DEFAULT_LEARNING_RATE,
    features_key: FeaturesKey = None,
    labels_key: LabelsKey = None,
    label_column: LabelColumn = None,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Train logistic regression with encrypted weights, using only a public key.

    Scenario 1: --encrypted-data (the data owner's ciphertexts), weights start at zero.
    Scenario 2: --encrypted-model plus --dataset (your plaintext data) or --encrypted-data.

    Example: cifer securetrain train --encrypted-data ./alice/encrypted_prj1_alice_data.enc
    --public-key ./keys/prj1_alice_public.key --output-model ./bob/prj1_trained_model.enc
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
        out = check_encrypted_output(output_model, force=force)
        key = load_training_key(public_key)
        design: EncryptedDataset | PlainDesign
        if encrypted_data is not None:
            design = st.load_encrypted_dataset(encrypted_data, key)
        else:
            assert dataset is not None
            design = st.plain_design(
                _load_dataset(dataset, features_key, labels_key, label_column), key.params
            )
        if encrypted_model is not None:
            start = st.load_encrypted_model(encrypted_model, key)
        else:
            start = st.encrypt_model(st.LogisticModel.zeros(design.num_features), key)
        with _bars(quiet) as bar:
            bars: dict[int, Callable[[int, int], None]] = {}

            def on_step(k: int, done: int, total: int) -> None:
                if k not in bars:
                    bars[k] = bar(f"iteration {k + 1}/{iterations}", total)
                bars[k](done, total)

            trained = st.train_encrypted(
                design, start, iterations=iterations, learning_rate=learning_rate, on_step=on_step
            )
        st.save_encrypted(trained, out)
    except (CiferError, OSError) as exc:
        raise fail(exc) from exc
    console.print(
        f"trained {iterations} iterations on {design.num_samples} samples "
        f"({'encrypted' if encrypted_data else 'plaintext'} data, encrypted weights) -> {out}",
        highlight=False,
    )
    console.print(
        "accuracy is available only after decryption: the key holder runs "
        f"`cifer securetrain decrypt-model --input-model {out} --private-key PRIVATE.key "
        "--output-model model.h5`, then `cifer securetrain evaluate --model model.h5 "
        "--dataset DATA`.",
        highlight=False,
    )
    console.print(f"  SHARE  {out}  (send it back to the key holder)", highlight=False)


@app.command("decrypt-model")
def decrypt_model_cmd(
    input_model: Annotated[Path, typer.Option("--input-model", help="Encrypted model (.enc).")],
    private_key: Annotated[
        Path, typer.Option("--private-key", help="Your private key (private.key).")
    ],
    output_model: Annotated[
        Path, typer.Option("--output-model", help="Plaintext model to write (.h5, .pt, .npz).")
    ],
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Decrypt a model encrypted under your key and save it as .h5 (Keras), .pt or .npz.

    Also decrypts the encrypted global model a federated strategy saved (save_path=), into
    .npz or .pt named arrays (FedOpt's pending server step is applied first).

    Example: cifer securetrain decrypt-model --input-model ./bob/encrypted_prj2_trained_model.enc
    --private-key ./keys/alice_private.key --output-model ./bob/final_model_decrypted.h5
    """
    try:
        out = check_plain_output(output_model, force=force)
        key = load_private_key(private_key)
        if is_federated_model(input_model):
            arrays = decrypt_federated_model(input_model, key)
            write_arrays(arrays, out)
            console.print(
                f"decrypted a federated model ({len(arrays)} arrays: "
                f"{', '.join(list(arrays)[:4])}{'...' if len(arrays) > 4 else ''}) -> {out}",
                highlight=False,
            )
            return
        enc = st.load_encrypted_model(input_model, key)
        with _bars(quiet) as bar:
            step = bar("decrypting", 1)
            model = st.decrypt_model(enc, key)
            step(1, 1)
        st.write_model(model, out)
    except (CiferError, OSError) as exc:
        raise fail(exc) from exc
    console.print(
        f"decrypted a model with {model.num_features} features -> {out}; evaluate it with "
        f"`cifer securetrain evaluate --model {out} --dataset DATA`.",
        highlight=False,
    )


@app.command("evaluate")
def evaluate_cmd(
    model: Annotated[Path, typer.Option("--model", help="Plaintext model (.h5, .pt, .npz).")],
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
    for name, value in metrics.items():
        console.print(f"{name:<10} {value:.4f}" if name != "samples" else f"{name:<10} {value:.0f}")
