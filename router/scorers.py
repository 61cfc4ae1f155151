"""Which route fits a request best: the scorers.

Classes are the route names, plus `base` when the operator gave negative examples. Each
scorer is fitted on the example vectors (unit length) and scores a batch of queries at once:
one score in [0, 1] per class. Whether the request belongs to its best route at all is the
gate's question (`gate.py`), answered apart.

- `linear` (default): multinomial logistic regression on the embeddings, with `base` as a
  class of its own. Measured best on requests phrased unlike the examples (bench/router.py),
  and its scoring is one matrix product, so 10,000 routes cost well under a millisecond.
- `centroid`: cosine similarity to each class's mean vector (the common baseline).
- `knn`: similarity-weighted vote of the k nearest examples.
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np

ScoringMethod = Literal["linear", "centroid", "knn"]
METHODS: tuple[ScoringMethod, ...] = ("linear", "centroid", "knn")


class Scorer(Protocol):
    classes: list[str]

    def fit(
        self,
        vectors: np.ndarray,
        labels: list[str],
        weights: np.ndarray | None = None,
        previous: Scorer | None = None,
    ) -> None:
        """Fit on example vectors; `previous`, the fit this one replaces (a change of a few
        routes), is where an iterative fit may start from."""

    def scores(self, queries: np.ndarray) -> np.ndarray: ...


def _classes(labels: list[str]) -> list[str]:
    return sorted(set(labels))


class CentroidScorer:
    def __init__(self) -> None:
        self.classes: list[str] = []
        self._centroids = np.zeros((0, 0), dtype=np.float32)

    def fit(
        self,
        vectors: np.ndarray,
        labels: list[str],
        weights: np.ndarray | None = None,
        previous: Scorer | None = None,
    ) -> None:
        self.classes = _classes(labels)
        tags = np.asarray(labels)
        w = np.ones(len(labels)) if weights is None else weights
        centroids = np.stack(
            [np.average(vectors[tags == c], axis=0, weights=w[tags == c]) for c in self.classes]
        )
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        self._centroids = centroids.astype(np.float32)

    def scores(self, queries: np.ndarray) -> np.ndarray:
        return np.clip(queries @ self._centroids.T, 0.0, 1.0)


class KnnScorer:
    def __init__(self, k: int = 5) -> None:
        self.k = k
        self.classes: list[str] = []
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        self._onehot = np.zeros((0, 0), dtype=np.float32)

    def fit(
        self,
        vectors: np.ndarray,
        labels: list[str],
        weights: np.ndarray | None = None,
        previous: Scorer | None = None,
    ) -> None:
        self.classes = _classes(labels)
        index = {c: i for i, c in enumerate(self.classes)}
        self._vectors = vectors.astype(np.float32)
        self._onehot = np.zeros((len(labels), len(self.classes)), dtype=np.float32)
        self._onehot[np.arange(len(labels)), [index[x] for x in labels]] = (
            1.0 if weights is None else weights
        )

    def scores(self, queries: np.ndarray) -> np.ndarray:
        similarity = np.clip(queries @ self._vectors.T, 0.0, None)
        k = min(self.k, similarity.shape[1])
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        weights = np.take_along_axis(similarity, nearest, axis=1)
        votes = np.einsum("nk,nkc->nc", weights, self._onehot[nearest])
        total = votes.sum(axis=1, keepdims=True)
        return np.divide(votes, total, out=np.zeros_like(votes), where=total > 0)


class LinearScorer:
    """Softmax over a linear map of the embedding. With a single class there is nothing to
    discriminate: it scores by centroid similarity instead."""

    def __init__(self, c: float = 1.0) -> None:
        self.c = c
        self.classes: list[str] = []
        self._weights = np.zeros((0, 0), dtype=np.float32)
        self._bias = np.zeros(0, dtype=np.float32)
        self._single: CentroidScorer | None = None
        self.iterations = 0  # the last fit's solver iterations: what a warm start saves

    @classmethod
    def from_weights(
        cls, classes: list[str], weights: np.ndarray, bias: np.ndarray
    ) -> LinearScorer:
        scorer = cls()
        scorer.classes = list(classes)
        scorer._weights = weights.astype(np.float32)
        scorer._bias = bias.astype(np.float32)
        return scorer

    def fit(
        self,
        vectors: np.ndarray,
        labels: list[str],
        weights: np.ndarray | None = None,
        previous: Scorer | None = None,
    ) -> None:
        from sklearn.linear_model import LogisticRegression

        self.classes = _classes(labels)
        if len(self.classes) == 1:
            self._single = CentroidScorer()
            self._single.fit(vectors, labels, weights)
            return
        self._single = None
        # Balanced: an operator's handful of `base` examples must count against a route's 50.
        model = LogisticRegression(C=self.c, max_iter=2000, class_weight="balanced")
        if (
            isinstance(previous, LinearScorer)
            and previous._weights.shape[1:] == vectors.shape[1:]
            and len(self.classes) > 2
        ):
            # The objective is convex: starting from the last optimum reaches the same one,
            # in a fraction of the iterations when a few of many routes changed.
            model.warm_start = True
            model.coef_, model.intercept_ = previous.start_for(self.classes)
        model.fit(vectors, np.asarray(labels), sample_weight=weights)
        self.iterations = int(np.max(model.n_iter_))
        assert list(model.classes_) == self.classes
        weights, bias = model.coef_, model.intercept_
        if weights.shape[0] == 1:  # two classes: sklearn keeps one row, for the second class
            weights = np.concatenate([-weights / 2, weights / 2])
            bias = np.concatenate([-bias / 2, bias / 2])
        self._weights = weights.astype(np.float32)
        self._bias = bias.astype(np.float32)

    def start_for(self, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """This fit's weights and biases laid out for `classes`; a class it lacks starts at
        zero weights and the lowest bias (unlikely everywhere until the fit moves it)."""
        weights = np.zeros((len(classes), self._weights.shape[1]), dtype=np.float64)
        bias = np.full(len(classes), float(self._bias.min()))
        known = {c: i for i, c in enumerate(self.classes)}
        for row, name in enumerate(classes):
            if name in known:
                weights[row] = self._weights[known[name]]
                bias[row] = self._bias[known[name]]
        return weights, bias

    def scores(self, queries: np.ndarray) -> np.ndarray:
        if self._single is not None:
            return self._single.scores(queries)
        logits = queries @ self._weights.T + self._bias
        logits -= logits.max(axis=1, keepdims=True)
        odds = np.exp(logits)
        return odds / odds.sum(axis=1, keepdims=True)


def make_scorer(method: ScoringMethod) -> Scorer:
    scorers: dict[str, type[Scorer]] = {
        "linear": LinearScorer,
        "centroid": CentroidScorer,
        "knn": KnnScorer,
    }
    return scorers[method]()
