"""Is a request in its best route's domain at all? The open-set gate.

A scorer says which route fits a request best; the gate says whether it fits that route
well enough to leave the base. It needs no `base` examples from the operator:

- a request's **nearness** to a route is the mean cosine of its `K` nearest examples there;
- its **in-domain score** for the route is the mean of two shares of general requests
  (shipped with the router, `general.py`), both below the request's nearness: those less
  near to *this route*, and those less near to *the route they are nearest to*. The first
  calibrates per route (a route of tight examples and one of loose ones mean the same); the
  second answers the best of N: a general request is nearer to *some* route the more routes
  there are, and the score must not rise with the count. 0.9 reads "nearer to this route
  than about 90 % of general requests are to theirs";
- where the operator gave `base` examples (negatives, labels from the review loop), a request
  whose nearest negative is at least as near as the route's nearest example scores 0: what
  the operator said goes, and a text labelled for a route is never overruled by negatives.

General requests that say the same as a route's own examples (cosine >= `NEAR_ROUTE_COSINE`
to one of them) are left out of both shares. Chosen on the benchmark sets by the worst of them
(docs/benchmarks.md, Router).
"""

from __future__ import annotations

import numpy as np

# The in-domain score below which a request goes to the base, unless `switchboard route
# calibrate` fitted one for the route.
DEFAULT_THRESHOLD = 0.9
K = 3  # examples a nearness averages over (fewer where a route has fewer)
# A general request whose cosine to a route example reaches this is no evidence against the
# route: it says the same as the route's own material.
NEAR_ROUTE_COSINE = 0.8
CANDIDATES = 8  # routes per request that get an in-domain score: the best-scoring ones


def _top_mean(similarity: np.ndarray) -> np.ndarray:
    """Nearness: per row, the mean of its `K` largest cosines (a route's rows are never empty)."""
    k = min(K, similarity.shape[1])
    return np.partition(similarity, -k, axis=1)[:, -k:].mean(axis=1)


def _share_below(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per value, the share of the sorted `reference` at or below it (1 with no reference)."""
    if not len(reference):
        return np.ones(len(values), dtype=np.float32)
    return np.searchsorted(reference, values, side="right") / len(reference)


class OpenSetGate:
    def __init__(
        self,
        routes: dict[str, np.ndarray],
        general: np.ndarray,
        negatives: np.ndarray | None = None,
    ) -> None:
        """`routes`: each route's example vectors; `general`: the general requests' vectors
        (none: the gate lets every request through unless the operator's `negatives` are
        nearer)."""
        self.routes = routes
        self.negatives = negatives if negatives is not None and len(negatives) else None
        self._general: dict[str, np.ndarray] = {}  # route -> general requests' nearness, sorted
        best = np.full(len(general), -np.inf, dtype=np.float32)  # nearness to their best route
        echo = np.zeros(len(general), dtype=bool)  # repeats some route's own example
        for name, examples in routes.items() if len(general) else ():
            similarity = general @ examples.T
            near, kept = _top_mean(similarity), similarity.max(axis=1) < NEAR_ROUTE_COSINE
            self._general[name] = np.sort(near[kept])
            best, echo = np.maximum(best, near), echo | ~kept
        self._best = np.sort(best[~echo])

    def in_domain(self, queries: np.ndarray, route: str) -> np.ndarray:
        """Each query's in-domain score for `route`, in [0, 1]."""
        return self._in_domain(queries, route, self._nearest_negative(queries))

    def _nearest_negative(self, queries: np.ndarray) -> np.ndarray | None:
        """Each query's cosine to its nearest operator negative (None: there are none)."""
        return None if self.negatives is None else (queries @ self.negatives.T).max(axis=1)

    def _in_domain(
        self, queries: np.ndarray, route: str, nearest_negative: np.ndarray | None
    ) -> np.ndarray:
        similarity = queries @ self.routes[route].T
        near = _top_mean(similarity)
        if route in self._general:
            score = (_share_below(self._general[route], near) + _share_below(self._best, near)) / 2
        else:  # no general requests: nothing speaks for the base but the operator
            score = np.ones(len(queries), dtype=np.float32)
        if nearest_negative is not None:  # nearest against nearest: a labelled text keeps its label
            score = np.where(nearest_negative >= similarity.max(axis=1), 0.0, score)
        return np.asarray(score, dtype=np.float32)

    def scores(self, queries: np.ndarray, classes: list[str], ranked: np.ndarray) -> np.ndarray:
        """In-domain scores laid out like the scorer's (one column per class), for each
        query's `CANDIDATES` best routes (`ranked`: the scorer's scores); 0 elsewhere."""
        gates = np.zeros((len(queries), len(classes)), dtype=np.float32)
        routed = [i for i, name in enumerate(classes) if name in self.routes]
        if not routed:
            return gates
        columns = np.asarray(routed)
        order = np.argsort(-ranked[:, columns], axis=1)[:, :CANDIDATES]
        negative = self._nearest_negative(queries)  # once per query, not once per route
        for column in np.unique(columns[order]):
            rows = np.nonzero((columns[order] == column).any(axis=1))[0]
            gates[rows, column] = self._in_domain(
                queries[rows], classes[column], None if negative is None else negative[rows]
            )
        return gates
