"""Does MC-dropout spread tell clean digits from corrupted ones, and how much does that depend on the network?

    .venv/bin/python bench/study_mc_dropout.py [--seeds 5] [--passes 100]

Issue 7 asks that MC-dropout spread separate scikit-learn's digits from inverted, noisy and rotated (90°) copies
with AUROC above 0.9. The demo's CNN reaches it for inverted and noisy digits but not for rotated ones. This
study trains several variants of the same small CNN (audits.methods.architectures.SmallCNN), each with several
training seeds, on 1,200 digits, and scores the other 597 clean digits against their corrupted copies:

- ``mi`` and ``std``: MC dropout's mutual information and the std of the predicted class's probability over
  ``--passes`` passes (audits.methods.dropout.score_images, the audit's own code);
- ``softmax``: 1 - the deterministic network's top probability (dropout off), the baseline MC dropout must beat.

AUROC is scikit-learn's ``roc_auc_score``. One run writes bench/out/mc_dropout_study.json and prints a table with
each variant's lowest, median and highest AUROC over the seeds. Nothing here is timed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KINDS = ("inverted", "noise", "rotated")
TRAIN_ROWS = 1200


def shifted_copies(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The images and four copies moved by one pixel (up, down, left, right; the vacated edge is zero)."""
    copies = [images]
    for axis in (-1, -2):
        for step in (1, -1):
            moved = np.roll(images, step, axis=axis)
            edge = [slice(None)] * images.ndim
            edge[axis] = 0 if step == 1 else -1
            moved[tuple(edge)] = 0.0
            copies.append(moved)
    return np.concatenate(copies), np.tile(labels, len(copies))


def variants() -> dict[str, dict]:
    """name -> how to build and train it. ``epochs`` counts passes over the (possibly augmented) training set."""
    from audits.methods.architectures import SmallCNN

    return {
        "zero-padded (the demo's CNN)": {"module": lambda: SmallCNN(), "epochs": 15, "augment": False},
        "valid convolutions (padding=0)": {"module": lambda: SmallCNN(padding=0), "epochs": 15, "augment": False},
        "valid, 32 channels, Dropout2d 0.1": {"module": lambda: SmallCNN(padding=0, channels=32, conv_dropout=0.1),
                                              "epochs": 15, "augment": False},
        "zero-padded, 1-pixel shift augmentation": {"module": lambda: SmallCNN(), "epochs": 6, "augment": True},
    }


def auroc(clean: np.ndarray, shifted: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(clean)), np.ones(len(shifted))], np.r_[clean, shifted]))


def one_network(spec: dict, seed: int, X: np.ndarray, y: np.ndarray, passes: int) -> dict:
    from audits.methods.dropout import score_images
    from audits.methods.network import TorchClassifier
    from audits.methods.synthetic import corrupt

    train_X, train_y = X[:TRAIN_ROWS], y[:TRAIN_ROWS]
    if spec["augment"]:
        train_X, train_y = shifted_copies(train_X, train_y)
    model = TorchClassifier(spec["module"](), (1, 8, 8), epochs=spec["epochs"], lr=3e-3, random_state=seed)
    model.fit(train_X.reshape(len(train_X), -1), train_y)
    held, held_y = X[TRAIN_ROWS:], y[TRAIN_ROWS:]

    def softmax_doubt(images: np.ndarray) -> np.ndarray:
        return 1.0 - model.predict_proba(images.reshape(len(images), -1)).max(axis=1)

    clean = score_images(model.module_, held, passes=passes, seed=0)
    out = {"seed": seed, "accuracy": float(np.mean(model.predict(held.reshape(len(held), -1)) == held_y))}
    for kind in KINDS:
        images = corrupt(held, kind)
        scores = score_images(model.module_, images, passes=passes, seed=0)
        out[kind] = {"mi": auroc(clean.mutual_information, scores.mutual_information), "std": auroc(clean.std, scores.std),
                     "softmax": auroc(softmax_doubt(held), softmax_doubt(images)),
                     "modal_class_share": float(np.bincount(scores.predicted).max() / len(images))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=100)
    args = parser.parse_args()

    import torch

    from audits.methods.synthetic import digits

    torch.set_num_threads(min(2, torch.get_num_threads()))  # the same arithmetic on every machine this runs on
    X, y = digits()
    order = np.random.default_rng(0).permutation(len(X))  # the truth tests' split
    X, y = X[order], y[order]
    results = {}
    for name, spec in variants().items():
        runs = [one_network(spec, seed, X, y, args.passes) for seed in range(args.seeds)]
        results[name] = runs
        acc = np.array([r["accuracy"] for r in runs])
        print(f"\n{name}: held-out accuracy {acc.min():.3f}-{acc.max():.3f}")
        for kind in KINDS:
            cells = []
            for score in ("mi", "std", "softmax"):
                values = np.array([r[kind][score] for r in runs])
                cells.append(f"{score} {values.min():.2f}/{np.median(values):.2f}/{values.max():.2f}")
            modal = np.median([r[kind]["modal_class_share"] for r in runs])
            print(f"  {kind:9s} AUROC min/median/max  " + "   ".join(cells) + f"   (one class takes {modal:.0%})")
        sys.stdout.flush()
    out = REPO / "bench" / "out" / "mc_dropout_study.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"passes": args.passes, "seeds": args.seeds, "train_rows": TRAIN_ROWS,
                               "held_out_rows": len(X) - TRAIN_ROWS, "torch": torch.__version__,
                               "machine": platform.machine(), "variants": results}, indent=2))
    print(f"\nwritten: {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
