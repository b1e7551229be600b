"""Stage evaluate: metrics of the trained checkpoint on the validation split,
written to metrics/val.json."""

import json
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(__file__))

import common  # noqa: E402
import models  # noqa: E402
import numpy as np  # noqa: E402

from mlfork import state  # noqa: E402


def f1_macro(y, predicted):
    """Unweighted mean of the per-class F1 = 2 TP / (2 TP + FP + FN), over every class
    in the labels or the predictions (as scikit-learn's f1_score(average="macro"))."""
    scores = []
    for c in np.union1d(y, predicted):
        tp = np.sum((predicted == c) & (y == c))
        fp = np.sum((predicted == c) & (y != c))
        fn = np.sum((predicted != c) & (y == c))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def log_loss(y, proba, classes):
    """Mean cross-entropy of the true labels, probabilities clipped to [1e-15, 1]."""
    p = np.clip(proba[np.arange(len(y)), models.class_index(classes, y)], 1e-15, 1.0)
    return float(-np.mean(np.log(p)))


def main():
    params = common.load_params()
    saved = state.peek("models/checkpoint")  # the arrays, no random state touched
    model = models.model_class(saved["info"]["model"]).from_state(saved["objects"]["model"])
    X, y = common.load_split("data/val.npz")
    proba = model.predict_proba(X)
    predicted = model.classes[np.argmax(proba, axis=1)]
    metrics = {
        "accuracy": float(np.mean(predicted == y)),
        "f1_macro": f1_macro(y, predicted),
        "log_loss": log_loss(y, proba, model.classes),
    }
    if params["val_metric"] not in metrics:
        sys.exit(f"evaluate: val_metric {params['val_metric']!r} is not one of {sorted(metrics)}")
    common.atomic_write(
        "metrics/val.json", (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode()
    )
    print(
        "evaluate: "
        + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
        + f" (val_metric: {params['val_metric']})"
    )


if __name__ == "__main__":
    main()
