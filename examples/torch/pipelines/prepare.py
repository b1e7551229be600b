"""Stage prepare: scikit-learn's digits, standardized, split into train and val."""

import os
from pathlib import Path

import numpy as np
import yaml
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

params = yaml.safe_load(Path("params.yaml").read_text())
X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)
X_train, X_val, y_train, y_val = train_test_split(
    X, y.astype(np.int64), test_size=params["dataset"]["test_size"],
    random_state=params["seed"], stratify=y,
)
os.makedirs("data", exist_ok=True)
np.savez("data/train.npz", X=X_train, y=y_train)
np.savez("data/val.npz", X=X_val, y=y_val)
print(f"prepare: {len(y_train)} train, {len(y_val)} val samples")
