"""securetrain on data as people have it: raw vs standardized features, binary and one-vs-rest.

For each dataset (breast cancer: binary; wine: 3 classes, one-vs-rest) the training split is
encrypted twice, once with raw features and once already standardized, trained on the
ciphertexts (scenario 1) and decrypted; the data owner's scaler is folded in, so both models
are evaluated on the rows they were given. Reference: scikit-learn's LogisticRegression
(standardized, converged). Metrics on a stratified 30 % hold-out and on the training split;
times for key generation, encryption, training and decryption.

Usage: python benchmarks/securetrain_raw.py [--iterations 1] [--lr LR] [--json]
(default step: securetrain's default for the feature count)
"""

import argparse
import json
import time

import numpy as np
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cifer_flwr import securetrain as st
from cifer_flwr.crypto.linalg import generate_training_key
from cifer_flwr.securetrain.algorithm import params_for_iterations, period_for


def dataset(x: np.ndarray, y: np.ndarray) -> st.Dataset:
    classes = tuple(float(c) for c in np.unique(y))
    return st.Dataset(x, np.searchsorted(classes, y).astype(np.int64), classes)


def run(name: str, x: np.ndarray, y: np.ndarray, iterations: int, lr: float | None) -> dict:
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    params = params_for_iterations(iterations)
    t = time.perf_counter()
    key = generate_training_key(params, max_period=period_for(len(ytr), params.slots))
    out: dict = {"dataset": name, "N": params.poly_modulus_degree, "iterations": iterations}
    out["keygen_s"] = round(time.perf_counter() - t, 2)
    pub = key.public()
    scaler = StandardScaler().fit(xtr)
    sk = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(xtr, ytr)
    out["sklearn"] = {
        "train": round(sk.score(xtr, ytr), 4),
        "holdout": round(sk.score(xte, yte), 4),
    }
    for kind, (a, b) in {
        "raw": (xtr, xte),
        "standardized": (scaler.transform(xtr), scaler.transform(xte)),
    }.items():
        train, test = dataset(a, ytr), dataset(b, yte)
        t = time.perf_counter()
        enc = st.encrypt_dataset(train, pub)
        t_enc = time.perf_counter() - t
        zeros = (
            st.LogisticModel.zeros(train.num_features)
            if train.num_outputs == 1
            else st.OneVsRestModel.from_matrix(
                np.zeros((train.num_outputs, train.num_features)), np.zeros(train.num_outputs)
            )
        )
        start = st.encrypt_model(zeros, pub, scaler=enc.scaler)
        t = time.perf_counter()
        trained = st.train_encrypted(enc, start, iterations=iterations, learning_rate=lr)
        t_train = time.perf_counter() - t
        t = time.perf_counter()
        model = st.decrypt_model(trained, key)
        t_dec = time.perf_counter() - t
        oracle = st.train_plaintext(
            train, iterations=iterations, learning_rate=lr, standardize=True
        )
        out[kind] = {
            "train": round(st.evaluate(model, train)["accuracy"], 4),
            "holdout": round(st.evaluate(model, test)["accuracy"], 4),
            "oracle_holdout": round(st.evaluate(oracle, test)["accuracy"], 4),
            "encrypt_s": round(t_enc, 2),
            "train_s": round(t_train, 2),
            "decrypt_s": round(t_dec, 2),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iterations", type=int, default=1)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--json", action="store_true", help="print one JSON object per dataset")
    args = ap.parse_args()
    for name, loader in (("breast_cancer", load_breast_cancer), ("wine", load_wine)):
        x, y = loader(return_X_y=True)
        result = run(name, x, y, args.iterations, args.lr)
        if args.json:
            print(json.dumps(result))
            continue
        print(f"{name} (N={result['N']}, {args.iterations} iterations, lr {args.lr or 'default'}):")
        print(f"  key generation {result['keygen_s']} s; sklearn {result['sklearn']}")
        for kind in ("raw", "standardized"):
            print(f"  {kind:<13} {result[kind]}")


if __name__ == "__main__":
    main()
