"""Our t-SNE projection against scikit-learn's, on the same 10,000 rows, in the same run.

    .venv/bin/python bench/bench_tsne.py [--seed 0] [--rows 10000] [--repeats 2] [--trust-rows 2000]

- data: ``make_classification`` (30 features, 10 informative), standardised, as the audit's feature
  space would be;
- ours: ``audits.uncertainty.projections.tsne_embed`` with the settings the ``projections`` audit
  derives from its default configuration for that many rows (``settings_from(ProjectionsConfig(), n)``):
  openTSNE, perplexity 30, PCA initialisation, exact neighbours, FFT gradients from 10,000 rows,
  FFT grid cells of 2 units, 125 + 250 iterations, 2 threads;
- scikit-learn: ``sklearn.manifold.TSNE(perplexity=30, init="pca", random_state=seed)`` with its
  defaults otherwise (Barnes-Hut, 1,000 iterations, every core for the gradient).

Both are timed on the same rows, alternating which goes first; the headline takes each side's best
round. Trustworthiness (``sklearn.manifold.trustworthiness``, k = 10) is computed on the same seeded
subsample of ``--trust-rows`` rows for both maps: on all 10,000 rows it needs a 10,000 x 10,000
distance matrix and its full argsort (gigabytes, and longer than the embeddings). On a subsample, a
row's 10 neighbours are found among the subsample, so the score judges the map at a coarser scale;
it is the same scale for both sides. A second quality figure uses every row: the KL divergence of
each map against the same input affinities (openTSNE's perplexity-30 affinities on exact neighbours,
evaluated with openTSNE's Barnes-Hut estimate), the quantity both implementations minimise. The script also checks that our coordinates are byte-identical
across rounds (same seed). Results go to bench/out/tsne.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def workload(rows: int, seed: int):
    from sklearn.datasets import make_classification
    from sklearn.preprocessing import StandardScaler

    X, _ = make_classification(n_samples=rows, n_features=30, n_informative=10, random_state=seed)
    return StandardScaler().fit_transform(X)


def ours(X, seed: int):
    from audits.methods.tsne import tsne_embed
    from audits.projections.projections import ProjectionsConfig, settings_from

    settings = settings_from(ProjectionsConfig(), len(X))
    started = time.perf_counter()
    embedding, _ = tsne_embed(X, None, settings, seed)
    return time.perf_counter() - started, embedding, settings.describe()


def sklearn_tsne(X, seed: int):
    from sklearn.manifold import TSNE

    started = time.perf_counter()
    embedding = TSNE(n_components=2, perplexity=30, init="pca", random_state=seed).fit_transform(X)
    return time.perf_counter() - started, embedding


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--trust-rows", type=int, default=2000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "tsne.json")
    args = parser.parse_args()

    import numpy as np
    import openTSNE
    import sklearn
    from openTSNE.affinity import PerplexityBasedNN
    from openTSNE.kl_divergence import kl_divergence_approx_bh
    from sklearn.manifold import trustworthiness

    X = workload(args.rows, args.seed)
    P = PerplexityBasedNN(X, perplexity=30, method="exact", random_state=args.seed).P

    def kl(embedding) -> float:
        return float(kl_divergence_approx_bh(P.indices, P.indptr, P.data, np.array(embedding, dtype=float, order="C")))

    subsample = np.sort(np.random.default_rng(args.seed).choice(len(X), size=min(args.trust_rows, len(X)), replace=False))
    print(f"{args.rows} rows x {X.shape[1]} features; {os.cpu_count()} CPU(s); load average {os.getloadavg()[0]:.2f}; "
          f"openTSNE {openTSNE.__version__}, scikit-learn {sklearn.__version__}", flush=True)
    ours(X[:200], args.seed)  # imports and compiled code paid before timing

    rounds, digests, setting = [], [], ""
    for r in range(args.repeats):
        sides = ["ours", "sklearn"] if r % 2 == 0 else ["sklearn", "ours"]
        result = {}
        for side in sides:
            if side == "ours":
                seconds, embedding, setting = ours(X, args.seed)
                digests.append(hashlib.sha256(np.ascontiguousarray(embedding).tobytes()).hexdigest())
            else:
                seconds, embedding = sklearn_tsne(X, args.seed)
            trust = float(trustworthiness(X[subsample], embedding[subsample], n_neighbors=args.k))
            divergence = kl(embedding)
            result[side] = {"seconds": seconds, "trustworthiness": trust, "kl_divergence": divergence}
            print(f"  round {r + 1} {side:8} {seconds:7.2f} s  trustworthiness {trust:.4f}  KL {divergence:.4f}", flush=True)
        result["ratio"] = result["ours"]["seconds"] / result["sklearn"]["seconds"]
        rounds.append(result)

    best = {side: min(x[side]["seconds"] for x in rounds) for side in ("ours", "sklearn")}
    trust = {side: rounds[0][side]["trustworthiness"] for side in ("ours", "sklearn")}
    divergence = {side: rounds[0][side]["kl_divergence"] for side in ("ours", "sklearn")}
    ratio = best["ours"] / best["sklearn"]
    deterministic = len(set(digests)) == 1
    print()
    print(f"| side | best of {args.repeats} (s) | trustworthiness (k={args.k}, {len(subsample)} rows) | KL (all rows, same P) | settings |")
    print("|---|---|---|---|---|")
    print(f"| ours (openTSNE) | {best['ours']:.2f} | {trust['ours']:.4f} | {divergence['ours']:.4f} | {setting} |")
    print(f"| scikit-learn TSNE | {best['sklearn']:.2f} | {trust['sklearn']:.4f} | {divergence['sklearn']:.4f} | perplexity 30, init pca, Barnes-Hut, 1000 iterations |")
    print(f"\nratio ours / scikit-learn: {ratio:.3f} (goal <= 0.2: {'met' if ratio <= 0.2 else 'NOT met'}); "
          f"per round: {', '.join(format(x['ratio'], '.3f') for x in rounds)}")
    print(f"trustworthiness difference (ours - scikit-learn): {trust['ours'] - trust['sklearn']:+.4f}; "
          f"KL ours / scikit-learn: {divergence['ours'] / divergence['sklearn']:.3f}")
    print(f"our coordinates byte-identical across rounds: {deterministic}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "rows": args.rows, "features": int(X.shape[1]), "seed": args.seed, "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg()[0], "ours_settings": setting,
        "sklearn_settings": "TSNE(perplexity=30, init='pca', random_state=seed), defaults otherwise",
        "trustworthiness_k": args.k, "trustworthiness_rows": int(len(subsample)),
        "rounds": rounds, "best_seconds": best, "ratio": ratio, "goal_ratio": 0.2, "goal_met": ratio <= 0.2,
        "trustworthiness": trust, "kl_divergence": divergence, "ours_deterministic": deterministic,
    }, indent=2))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
