"""How a request is scored against the routes, and how far it belongs to them.

Classes are the route names, plus `base` when there are negative examples. Each scorer is
fitted on the example vectors (unit length) and scores a batch of queries at once: one score
in [0, 1] per class (which route fits best), and from those one *in-domain* score per route
(does the request belong to that route rather than to the base?). The policy picks the route
by the first and gates it by the second: two questions, answered apart.

- `linear` (default): multinomial logistic regression on the embeddings, with `base` as a
  class of its own. Measured best on requests phrased unlike the examples (bench/router.py),
  and its scoring is one matrix product, so 10,000 routes cost well under a millisecond.
- `centroid`: cosine similarity to each class's mean vector (the common baseline).
- `knn`: similarity-weighted vote of the k nearest examples.
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np

from registry.routing import BASE_ROUTE

Method = Literal["linear", "centroid", "knn"]
METHODS: tuple[Method, ...] = ("linear", "centroid", "knn")
# Uncalibrated thresholds on the in-domain score, per method (a probability against the base,
# a cosine, a vote share); `switchboard route calibrate` fits one per route.
DEFAULT_THRESHOLD: dict[Method, float] = {"linear": 0.5, "centroid": 0.2, "knn": 0.5}


class Scorer(Protocol):
    classes: list[str]

    def fit(
        self, vectors: np.ndarray, labels: list[str], weights: np.ndarray | None = None
    ) -> None: ...

    def scores(self, queries: np.ndarray) -> np.ndarray: ...

    def in_domain(self, scores: np.ndarray) -> np.ndarray: ...


def _classes(labels: list[str]) -> list[str]:
    return sorted(set(labels))


def _unless_base_wins(classes: list[str], scores: np.ndarray) -> np.ndarray:
    """A similarity as the in-domain score, zeroed where the base examples are as close."""
    if BASE_ROUTE not in classes:
        return scores
    base = scores[:, [classes.index(BASE_ROUTE)]]
    return np.where(scores > base, scores, 0.0)


class CentroidScorer:
    def __init__(self) -> None:
        self.classes: list[str] = []
        self._centroids = np.zeros((0, 0), dtype=np.float32)

    def fit(
        self, vectors: np.ndarray, labels: list[str], weights: np.ndarray | None = None
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

    def in_domain(self, scores: np.ndarray) -> np.ndarray:
        return _unless_base_wins(self.classes, scores)


class KnnScorer:
    def __init__(self, k: int = 5) -> None:
        self.k = k
        self.classes: list[str] = []
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        self._onehot = np.zeros((0, 0), dtype=np.float32)

    def fit(
        self, vectors: np.ndarray, labels: list[str], weights: np.ndarray | None = None
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

    def in_domain(self, scores: np.ndarray) -> np.ndarray:
        return _unless_base_wins(self.classes, scores)


# A lone route without `base` examples has nothing to be told apart from: its in-domain score
# weighs its cosine against this one, so 0.5 means a cosine of 0.25 (the old default there).
SINGLE_ROUTE_BASE_COSINE = 0.25


class LinearScorer:
    """Softmax over a linear map of the embedding. With a single class there is nothing to
    discriminate: it scores by centroid similarity instead, so the threshold still decides.

    A route's in-domain score is its probability against the base alone, p_r / (p_r + p_base):
    a ratio of two softmax terms depends on those two logits only, so it means the same at 2
    routes and at 500 (a threshold on p_r itself sinks as routes are added and split the
    mass). With no `base` examples it is the route's odds against the best route, p_r / p_top:
    nothing speaks against the best route, and a mix partner must be near as likely as it.
    """

    def __init__(self, c: float = 1.0) -> None:
        self.c = c
        self.classes: list[str] = []
        self._weights = np.zeros((0, 0), dtype=np.float32)
        self._bias = np.zeros(0, dtype=np.float32)
        self._single: CentroidScorer | None = None

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
        self, vectors: np.ndarray, labels: list[str], weights: np.ndarray | None = None
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
        model.fit(vectors, np.asarray(labels), sample_weight=weights)
        assert list(model.classes_) == self.classes
        weights, bias = model.coef_, model.intercept_
        if weights.shape[0] == 1:  # two classes: sklearn keeps one row, for the second class
            weights = np.concatenate([-weights / 2, weights / 2])
            bias = np.concatenate([-bias / 2, bias / 2])
        self._weights = weights.astype(np.float32)
        self._bias = bias.astype(np.float32)

    def scores(self, queries: np.ndarray) -> np.ndarray:
        if self._single is not None:
            return self._single.scores(queries)
        logits = queries @ self._weights.T + self._bias
        logits -= logits.max(axis=1, keepdims=True)
        odds = np.exp(logits)
        return odds / odds.sum(axis=1, keepdims=True)

    def in_domain(self, scores: np.ndarray) -> np.ndarray:
        if self._single is not None:  # its cosine against a notional base at a fixed cosine
            return scores / np.maximum(scores + SINGLE_ROUTE_BASE_COSINE, 1e-30)
        if BASE_ROUTE in self.classes:
            against = scores[:, [self.classes.index(BASE_ROUTE)]]
            return scores / np.maximum(scores + against, 1e-30)
        return scores / scores.max(axis=1, keepdims=True)


def make_scorer(method: Method) -> Scorer:
    scorers: dict[str, type[Scorer]] = {
        "linear": LinearScorer,
        "centroid": CentroidScorer,
        "knn": KnnScorer,
    }
    return scorers[method]()
