"""The pipeline's two models, in plain numpy (no scikit-learn: it takes 1.5 s to import).

Both are classifiers over the labels seen in training (`classes`), with the same interface:

    partial_fit(X, y)   one mini-batch step on the mean cross-entropy + alpha/2 * ||weights||^2
                        (biases are not penalized)
    predict_proba(X)    (n, n_classes) probabilities, columns in the order of `classes`
    predict(X)          the most probable label of each row
    state()             every array the model needs to continue training exactly
    from_state(state)   the inverse of state()

The hyperparameters `lr` and `alpha` come from the config and are plain attributes, not
part of the state: train.py sets them at each iteration.
"""

import numpy as np


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def class_index(classes, y):
    """The column of each label of `y` in `classes` (sorted, as np.unique gives them)."""
    index = np.searchsorted(classes, y)
    if np.any(index >= len(classes)) or np.any(classes[np.minimum(index, len(classes) - 1)] != y):
        raise ValueError(f"labels the model was not trained on: {sorted(set(y) - set(classes))}")
    return index


class Classifier:
    """What both models share: the labels, their one-hot encoding, predict()."""

    def __init__(self, classes, lr, alpha):
        self.classes = np.asarray(classes)
        self.lr, self.alpha = lr, alpha

    def one_hot(self, y):
        return np.eye(len(self.classes))[class_index(self.classes, y)]

    def predict(self, X):
        return self.classes[np.argmax(self.predict_proba(X), axis=1)]


class SoftmaxRegression(Classifier):
    """Multinomial logistic regression, trained by plain mini-batch SGD."""

    name = "sgd"

    def __init__(self, classes, W, b, lr=0.0, alpha=0.0):
        super().__init__(classes, lr, alpha)
        self.W, self.b = W, b

    @classmethod
    def create(cls, cfg, n_features, classes, rng):
        """Zero weights (the loss is convex: no random init needed, `rng` is unused)."""
        k = len(classes)
        return cls(classes, np.zeros((n_features, k)), np.zeros(k), cfg["lr"], cfg["alpha"])

    def predict_proba(self, X):
        return softmax(X @ self.W + self.b)

    def partial_fit(self, X, y):
        grad = (self.predict_proba(X) - self.one_hot(y)) / len(y)  # d loss / d logits
        self.W -= self.lr * (X.T @ grad + self.alpha * self.W)
        self.b -= self.lr * grad.sum(axis=0)

    def state(self):
        return {"classes": self.classes, "W": self.W, "b": self.b}

    @classmethod
    def from_state(cls, state, lr=0.0, alpha=0.0):
        return cls(state["classes"], state["W"].copy(), state["b"].copy(), lr, alpha)

    def mismatch(self, cfg):
        """Why `cfg` cannot continue this model, or None."""
        return None


class MLP(Classifier):
    """ReLU hidden layers and a softmax output, He-initialized, trained by Adam."""

    name = "mlp"
    beta1, beta2, eps = 0.9, 0.999, 1e-8  # Adam's usual constants

    def __init__(self, classes, weights, biases, adam, lr=0.0, alpha=0.0):
        super().__init__(classes, lr, alpha)
        self.weights, self.biases = weights, biases  # one (W, b) per layer
        # Adam: first and second moments of each parameter (weights then biases) and the
        # number of steps taken, for the bias correction.
        self.m, self.v, self.steps = adam["m"], adam["v"], int(adam["steps"])

    @property
    def params(self):
        return self.weights + self.biases

    @property
    def hidden(self):
        return [W.shape[1] for W in self.weights[:-1]]

    @classmethod
    def create(cls, cfg, n_features, classes, rng):
        sizes = [n_features, *cfg["hidden"], len(classes)]
        weights = [
            rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)  # He init
            for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True)
        ]
        biases = [np.zeros(fan_out) for fan_out in sizes[1:]]
        zeros = [np.zeros_like(p) for p in weights + biases]
        adam = {"m": zeros, "v": [z.copy() for z in zeros], "steps": 0}
        return cls(classes, weights, biases, adam, cfg["lr"], cfg["alpha"])

    def forward(self, X):
        """The activations of every layer: the input, the hidden ReLUs, the probabilities."""
        acts = [X]
        for W, b in zip(self.weights[:-1], self.biases[:-1], strict=True):
            acts.append(np.maximum(acts[-1] @ W + b, 0.0))
        acts.append(softmax(acts[-1] @ self.weights[-1] + self.biases[-1]))
        return acts

    def predict_proba(self, X):
        return self.forward(X)[-1]

    def partial_fit(self, X, y):
        acts = self.forward(X)
        grad = (acts[-1] - self.one_hot(y)) / len(y)  # d loss / d logits of the output
        w_grads, b_grads = [], []
        for layer in reversed(range(len(self.weights))):
            W = self.weights[layer]
            w_grads.insert(0, acts[layer].T @ grad + self.alpha * W)
            b_grads.insert(0, grad.sum(axis=0))
            if layer:  # back through the ReLU of the layer below
                grad = (grad @ W.T) * (acts[layer] > 0)
        self.steps += 1
        correction = np.sqrt(1 - self.beta2**self.steps) / (1 - self.beta1**self.steps)
        for p, g, m, v in zip(self.params, w_grads + b_grads, self.m, self.v, strict=True):
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            v += (1 - self.beta2) * g * g
            p -= self.lr * correction * m / (np.sqrt(v) + self.eps)

    def state(self):
        n = len(self.weights)
        state = {"classes": self.classes, "adam_steps": np.array(self.steps, dtype=np.int64)}
        for i in range(n):
            state[f"W{i}"], state[f"b{i}"] = self.weights[i], self.biases[i]
        for i, (m, v) in enumerate(zip(self.m, self.v, strict=True)):  # in the order of self.params
            state[f"adam_m{i}"], state[f"adam_v{i}"] = m, v
        return state

    @classmethod
    def from_state(cls, state, lr=0.0, alpha=0.0):
        n = sum(1 for key in state if key.startswith("W"))
        weights = [state[f"W{i}"].copy() for i in range(n)]
        biases = [state[f"b{i}"].copy() for i in range(n)]
        adam = {
            "m": [state[f"adam_m{i}"].copy() for i in range(2 * n)],
            "v": [state[f"adam_v{i}"].copy() for i in range(2 * n)],
            "steps": state["adam_steps"],
        }
        return cls(state["classes"], weights, biases, adam, lr, alpha)

    def mismatch(self, cfg):
        if self.hidden != list(cfg["hidden"]):
            return f"hidden {self.hidden} in the checkpoint, {list(cfg['hidden'])} in the config"
        return None


MODELS = {cls.name: cls for cls in (SoftmaxRegression, MLP)}


def model_class(name):
    if name not in MODELS:
        raise SystemExit(f"unknown model {name!r}, expected one of {sorted(MODELS)}")
    return MODELS[name]
