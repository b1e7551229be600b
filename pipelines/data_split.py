"""Stage data_split: seeded, stratified train/validation split of a bundled
scikit-learn dataset, standardized with the statistics of the train part."""

import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(__file__))

import common  # noqa: E402
from sklearn.datasets import load_digits, load_wine  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

# scikit-learn is only used here: this stage runs once per run, train and evaluate
# run every iteration and stay free of it (see common.py).
LOADERS = {"digits": load_digits, "wine": load_wine}


def load_dataset(name):
    """Features and labels of a dataset bundled with scikit-learn (no download)."""
    if name not in LOADERS:
        raise SystemExit(f"unknown dataset {name!r}, expected one of {sorted(LOADERS)}")
    return LOADERS[name](return_X_y=True)


def main():
    params = common.load_params()
    dataset = params["dataset"]
    X, y = load_dataset(dataset["name"])
    X_train, X_val, y_train, y_val = train_test_split(
        X, y, test_size=dataset["test_size"], random_state=params["seed"], stratify=y
    )
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    std[std == 0] = 1.0  # constant features (e.g. border pixels of digits)
    common.save_split("data/train.npz", (X_train - mean) / std, y_train)
    common.save_split("data/val.npz", (X_val - mean) / std, y_val)
    print(
        f"data_split: {dataset['name']}, {len(y_train)} train / {len(y_val)} val rows, "
        f"{X.shape[1]} features"
    )


if __name__ == "__main__":
    main()
