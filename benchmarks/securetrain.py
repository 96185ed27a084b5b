"""Encrypted vs plaintext logistic regression on scikit-learn's breast-cancer data.

Trains the same algorithm (Nesterov gradient ascent with the degree-3 sigmoid, same
iterations and learning rate) three ways and reports time per iteration and accuracy / ROC AUC:

* encrypted data, encrypted weights (scenario 1: only the public key trains);
* plaintext data x encrypted weights (scenario 2);
* plaintext, the same algorithm (the oracle);
* scikit-learn's LogisticRegression (L2, lbfgs), as the reference.

Metrics are on a stratified 30 % hold-out (features standardized on the training part) and on
the training data. Usage: python benchmarks/securetrain.py [--iterations 3] [--lr 0.2] [--json]
"""

import argparse
import json
import time

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from cifer_flwr import securetrain as st
from cifer_flwr.crypto.linalg import estimate_public_key_bytes, generate_training_key
from cifer_flwr.securetrain.algorithm import params_for_iterations, period_for


def metrics(model: st.LogisticModel, ds: st.Dataset) -> dict[str, float]:
    m = st.evaluate(model, ds)
    return {"accuracy": round(m["accuracy"], 4), "auc": round(m["auc"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iterations", type=int, default=st.DEFAULT_ITERATIONS)
    ap.add_argument("--lr", type=float, default=st.DEFAULT_LEARNING_RATE)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    k, lr = args.iterations, args.lr

    x, y = load_breast_cancer(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    scaler = StandardScaler().fit(xtr)
    train = st.Dataset(scaler.transform(xtr), ytr.astype(np.int64))
    test = st.Dataset(scaler.transform(xte), yte.astype(np.int64))

    params = params_for_iterations(k)
    t0 = time.perf_counter()
    key = generate_training_key(params, max_period=period_for(train.num_samples, params.slots))
    keygen = time.perf_counter() - t0
    public = key.public()
    public.context()  # load once, as the training party does

    t0 = time.perf_counter()
    enc_data = st.encrypt_dataset(train, key)
    encrypt_s = time.perf_counter() - t0
    start = st.encrypt_model(st.LogisticModel.zeros(train.num_features), public)

    t0 = time.perf_counter()
    zero = st.encrypt_model(
        st.LogisticModel.zeros(train.num_features), public, scaler=enc_data.scaler
    )
    enc_model = st.train_encrypted(enc_data, zero, iterations=k, learning_rate=lr)
    enc_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mixed_model = st.train_encrypted(
        st.plain_design(train, params), start, iterations=k, learning_rate=lr
    )
    mixed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scen1 = st.decrypt_model(enc_model, key)
    decrypt_s = time.perf_counter() - t0
    scen2 = st.decrypt_model(mixed_model, key)

    reps = 200
    t0 = time.perf_counter()
    for _ in range(reps):
        oracle = st.train_plaintext(train, iterations=k, learning_rate=lr)
    plain_s = (time.perf_counter() - t0) / reps

    sk = LogisticRegression(max_iter=1000).fit(train.X, train.y)
    sk_model = st.LogisticModel(sk.coef_.ravel(), float(sk.intercept_[0]))

    result = {
        "iterations": k,
        "learning_rate": lr,
        "samples": {"train": train.num_samples, "test": test.num_samples},
        "params": {
            "poly_modulus_degree": params.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(params.coeff_mod_bit_sizes),
            "scale_bits": params.scale_bits,
            "depth": params.depth,
        },
        "public_key_bytes": len(public.public_bytes),
        "public_key_bytes_estimate": estimate_public_key_bytes(params, params.slots),
        "seconds": {
            "keygen": round(keygen, 2),
            "encrypt_dataset": round(encrypt_s, 2),
            "decrypt_model": round(decrypt_s, 3),
            "per_iteration_encrypted_data": round(enc_s / k, 2),
            "per_iteration_plain_data_encrypted_weights": round(mixed_s / k, 2),
            "per_iteration_plaintext": round(plain_s / k, 6),
        },
        "max_abs_weight_error": {
            "scenario1": float(np.abs(scen1.to_vector() - oracle.to_vector()).max()),
            "scenario2": float(np.abs(scen2.to_vector() - oracle.to_vector()).max()),
        },
        "test": {
            "encrypted (scenario 1)": metrics(scen1, test),
            "plain data x enc weights (scenario 2)": metrics(scen2, test),
            "plaintext same algorithm": metrics(oracle, test),
            "sklearn LogisticRegression": metrics(sk_model, test),
        },
        "train": {
            "encrypted (scenario 1)": metrics(scen1, train),
            "plaintext same algorithm": metrics(oracle, train),
            "sklearn LogisticRegression": metrics(sk_model, train),
        },
    }
    assert (
        abs(
            roc_auc_score(test.y, sk.decision_function(test.X))
            - result["test"]["sklearn LogisticRegression"]["auc"]
        )
        < 1e-3
    )
    if args.json:
        print(json.dumps(result))
        return
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
