"""securetrain against scikit-learn: accuracy, iterations, wall time and sizes (issue 19).

For breast cancer (binary) and wine (3 classes, one-vs-rest), on a stratified 70 / 30 split of
the **raw** rows (no scaling by the caller):

* scenario 1: Alice encrypts her training rows (standardized on her side, the scaler encrypted),
  Bob trains on the ciphertexts from zero, Alice decrypts;
* scenario 2: Bob encrypts a starting model (zeros, or a default-initialised
  ``nn.Linear(d, 1)``-like start with ``--start uniform``), Alice trains it on her plaintext
  rows, Bob decrypts;

each for ``--rounds`` rounds of ``--iterations`` encrypted iterations, with the key holder's
refresh (decrypt and re-encrypt, ``cifer securetrain refresh``) between rounds. Printed:
held-out accuracy of both scenarios, of the plaintext run of the same algorithm and of
scikit-learn's ``LogisticRegression`` (standardized, converged), the iterations, wall times
and the sizes of the public and private key and of the encrypted dataset and model files.

Usage: python benchmarks/securetrain.py [--iterations 2] [--rounds 1] [--lr 0.5]
       [--start zero|uniform] [--json]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cifer_flwr import securetrain as st
from cifer_flwr.crypto.keys import write_key_pair
from cifer_flwr.crypto.linalg import generate_training_key
from cifer_flwr.securetrain.algorithm import params_for_iterations, period_for


def dataset(x: np.ndarray, y: np.ndarray) -> st.Dataset:
    classes = tuple(float(c) for c in np.unique(y))
    return st.Dataset(x, np.searchsorted(classes, y).astype(np.int64), classes)


def start_model(train: st.Dataset, kind: str) -> st.Classifier:
    d, k = train.num_features, train.num_outputs
    rng = np.random.default_rng(0)
    bound = 1.0 / np.sqrt(d)  # torch nn.Linear's default U(-1/sqrt(d), 1/sqrt(d))
    w = rng.uniform(-bound, bound, (k, d)) if kind == "uniform" else np.zeros((k, d))
    b = rng.uniform(-bound, bound, k) if kind == "uniform" else np.zeros(k)
    if k == 1:
        return st.LogisticModel(w[0], float(b[0]))
    return st.OneVsRestModel.from_matrix(w, b, train.classes)


def run(name: str, x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> dict:
    k, rounds = args.iterations, args.rounds
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    train, test = dataset(xtr, ytr), dataset(xte, yte)
    lr = args.lr or st.default_learning_rate(train.num_features)
    params = params_for_iterations(k)
    out: dict = {"dataset": name, "iterations": k, "rounds": rounds, "learning_rate": lr}
    out["N"] = params.poly_modulus_degree
    t = time.perf_counter()
    key = generate_training_key(params, max_period=period_for(train.num_samples, params.slots))
    out["keygen_s"] = round(time.perf_counter() - t, 2)
    pub = key.public()
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        priv_path, pub_path = write_key_pair(key, Path(tmp) / "keys")
        sizes["public_key"], sizes["private_key"] = (
            pub_path.stat().st_size,
            priv_path.stat().st_size,
        )
        np.savez(Path(tmp) / "data.npz", X=xtr, y=ytr)
        sizes["dataset_npz"] = (Path(tmp) / "data.npz").stat().st_size

        # Scenario 1: encrypted data, zero start, refresh between rounds.
        t = time.perf_counter()
        enc = st.encrypt_dataset(train, key)
        out["encrypt_dataset_s"] = round(time.perf_counter() - t, 2)
        sizes["dataset_enc"] = st.save_encrypted(enc, Path(tmp) / "data.enc").stat().st_size
        zeros = start_model(train, "zero")
        enc = st.load_encrypted_dataset(Path(tmp) / "data.enc", pub)  # what Bob receives
        model = st.encrypt_model(zeros, pub, scaler=enc.scaler)

        def refreshed(m: st.EncryptedModel) -> st.EncryptedModel:
            """The key holder's refresh, sent back as a file the trainer loads."""
            path = st.save_encrypted(st.refresh_model(m, key), Path(tmp) / "fresh.enc")
            return st.load_encrypted_model(path, pub)

        t1 = 0.0
        for r in range(rounds):
            if r:
                model = refreshed(model)
            t = time.perf_counter()
            model = st.train_encrypted(enc, model, iterations=k, learning_rate=lr)
            t1 += time.perf_counter() - t
        sizes["trained_model_enc"] = st.save_encrypted(model, Path(tmp) / "m1.enc").stat().st_size
        scen1 = st.decrypt_model(model, key)

        # Scenario 2: plaintext data x encrypted model from the chosen start.
        start = start_model(train, args.start)
        path = st.save_encrypted(st.encrypt_model(start, key), Path(tmp) / "m.enc")
        sizes["model_enc"] = path.stat().st_size
        enc_start = st.load_encrypted_model(path, pub)
        design = st.plain_design(train, params)
        model, t2, notes = enc_start, 0.0, []
        for r in range(rounds):
            if r:
                model = refreshed(model)
            t = time.perf_counter()
            model = st.train_encrypted(
                design, model, iterations=k, learning_rate=lr, on_notice=notes.append
            )
            t2 += time.perf_counter() - t
        scen2 = st.decrypt_model(model, key)

    # The plaintext run of the same algorithm (refresh = restart of the momentum).
    scaler = st.Scaler.fit(train.X)
    std = scaler.transform(train)
    oracle = None
    for _ in range(rounds):
        oracle = st.train_plaintext(
            std, iterations=k, learning_rate=lr, init=oracle, shrink_start=False
        )
    assert oracle is not None
    oracle = st.fold_scaler(oracle, scaler)
    sk = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(xtr, ytr)
    sk_acc = float(sk.score(xte, yte))

    def acc(m: st.Classifier) -> float:
        return round(st.evaluate(m, test)["accuracy"], 4)

    out["holdout_accuracy"] = {
        "scenario1": acc(scen1),
        "scenario2": acc(scen2),
        "plaintext_same_algorithm": acc(oracle),
        "sklearn": round(sk_acc, 4),
    }
    out["points_below_sklearn"] = {
        "scenario1": round(100 * (sk_acc - acc(scen1)), 1),
        "scenario2": round(100 * (sk_acc - acc(scen2)), 1),
    }
    out["train_s"] = {"scenario1": round(t1, 1), "scenario2": round(t2, 1)}
    out["bytes"] = sizes
    out["scenario2_notices"] = len(notes)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iterations", type=int, default=st.DEFAULT_ITERATIONS)
    ap.add_argument("--rounds", type=int, default=1, help="training rounds (refresh between)")
    ap.add_argument("--lr", type=float, default=None, help="default: by feature count")
    ap.add_argument("--start", choices=("zero", "uniform"), default="uniform")
    ap.add_argument("--json", action="store_true", help="print one JSON object per dataset")
    args = ap.parse_args()
    for name, loader in (("breast_cancer", load_breast_cancer), ("wine", load_wine)):
        x, y = loader(return_X_y=True)
        result = run(name, x, y, args)
        if args.json:
            print(json.dumps(result))
            continue
        mb = {k: f"{v / 1e6:.2f} MB" for k, v in result["bytes"].items()}
        print(
            f"{name}: N={result['N']}, {args.rounds} round(s) x {args.iterations} iterations, "
            f"lr {result['learning_rate']:.3g}, key generation {result['keygen_s']} s"
        )
        print(f"  held-out accuracy {result['holdout_accuracy']}")
        print(f"  points below scikit-learn {result['points_below_sklearn']}")
        print(f"  training wall time (s) {result['train_s']}")
        print(f"  sizes {mb}")


if __name__ == "__main__":
    main()
