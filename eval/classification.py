"""Clip classification metrics: top-1 accuracy with a 95 % interval, confusion matrices (table and picture)."""
from __future__ import annotations

import math

import numpy as np


def wilson_interval(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion ``hits / n`` (95 % for the default ``z``); ``(nan, nan)`` when n = 0.

    Preferred to the normal approximation: it stays inside [0, 1] and is not degenerate at 0 or n hits.
    """
    if n < 0 or not 0 <= hits <= n:
        raise ValueError(f"wilson_interval: need 0 <= hits <= n, got hits={hits}, n={n}")
    if n == 0:
        return float("nan"), float("nan")
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def classification_metrics(labels, logits, num_classes: int) -> dict:
    """Top-1 accuracy, its 95 % Wilson interval, the clip count and the confusion matrix
    (``confusion[true][predicted]``, counts) of ``logits [n, num_classes]`` against integer ``labels [n]``."""
    from sklearn.metrics import confusion_matrix

    labels = np.asarray(labels).astype(int).ravel()
    pred = np.asarray(logits).argmax(axis=1)
    hits = int((pred == labels).sum())
    low, high = wilson_interval(hits, len(labels))
    cm = confusion_matrix(labels, pred, labels=list(range(num_classes)))
    return {"accuracy": hits / len(labels) if len(labels) else float("nan"), "accuracy_ci95": [low, high],
            "clips": int(len(labels)), "confusion": cm.tolist()}


def plot_confusion(matrices: dict, label_names, path: str, title: str = "") -> None:
    """One panel per model: row-normalised confusion matrix (% of each true class), counts written in the cells.

    ``matrices``: ``{model name: confusion [true][predicted] counts}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(matrices)
    cols = min(n, 3)
    rows = -(-n // cols)
    size = 0.42 * len(label_names) + 2.5
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (name, cm) in zip(axes.flat, matrices.items()):
        cm = np.asarray(cm, float)
        totals = cm.sum(axis=1, keepdims=True)
        share = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
        ax.imshow(100 * share, cmap="Blues", vmin=0, vmax=100)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
        ticks = range(len(label_names))
        ax.set_xticks(ticks, label_names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(ticks, label_names, fontsize=8)
        acc = np.trace(cm) / max(cm.sum(), 1)
        ax.set_title(f"{name}: top-1 {100 * acc:.1f} % of {int(cm.sum())} clips", fontsize=10)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.97) if title else None)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def predict(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """``(logits [n, classes], labels [n])`` of ``model`` over every batch of ``dataset`` (inference mode)."""
    logits, labels = [], []
    for x, y in dataset:
        logits.append(model(x, training=False).numpy())
        labels.append(y.numpy())
    return np.concatenate(logits), np.concatenate(labels)
