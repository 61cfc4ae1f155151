"""Is a request in its best route's domain at all? The open-set gate.

A scorer says which route fits a request best; the gate says whether it fits that route
well enough to leave the base. It needs no `base` examples from the operator:

- a request's **nearness** to a route is the mean cosine of its `K` nearest examples there;
- the route's **in-domain score** for the request is the share of general requests (shipped
  with the router, `general.py`) that are less near to the route than the request is: a
  percentile, calibrated per route against everything else people ask, so 0.95 means "nearer
  to this route than 95 % of general requests are";
- where the operator gave `base` examples (negatives, labels from the review loop), a request
  at least as near to them as to the route scores 0: what the operator said goes.

General requests that say the same as a route's own examples (cosine >= `NEAR_ROUTE_COSINE`
to one of them) are left out of that route's percentile. Chosen on the benchmark sets by the
worst of them (docs/routing.md, Benchmarks): with no `base` examples it sends most general
requests to the base, where a gate that only weighed routes against each other sent none.
"""

from __future__ import annotations

import numpy as np

from switchboard_lora.router.general import NEAR_ROUTE_COSINE

# The in-domain score below which a request goes to the base, unless `switchboard route
# calibrate` fitted one for the route: nearer to the route than 95 % of general requests.
DEFAULT_THRESHOLD = 0.95
K = 3  # examples a nearness averages over (fewer where a route has fewer)
CANDIDATES = 8  # routes per request that get an in-domain score: the best-scoring ones


def nearness(queries: np.ndarray, examples: np.ndarray) -> np.ndarray:
    """Per query, the mean cosine of its `K` nearest rows of `examples` (-1 with none)."""
    if not len(examples):
        return np.full(len(queries), -1.0, dtype=np.float32)
    similarity = queries @ examples.T
    k = min(K, examples.shape[0])
    return np.partition(similarity, -k, axis=1)[:, -k:].mean(axis=1)


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
        for name, examples in routes.items():
            if not len(general):
                continue
            kept = general[(general @ examples.T).max(axis=1) < NEAR_ROUTE_COSINE]
            self._general[name] = np.sort(nearness(kept, examples))

    def in_domain(self, queries: np.ndarray, route: str) -> np.ndarray:
        """Each query's in-domain score for `route`, in [0, 1]."""
        near = nearness(queries, self.routes[route])
        reference = self._general.get(route)
        score: np.ndarray = np.ones(len(queries), dtype=np.float32)
        if reference is not None and len(reference):
            score = np.searchsorted(reference, near, side="right") / len(reference)
        if self.negatives is not None:
            score = np.where(nearness(queries, self.negatives) >= near, 0.0, score)
        return score.astype(np.float32)

    def scores(self, queries: np.ndarray, classes: list[str], ranked: np.ndarray) -> np.ndarray:
        """In-domain scores laid out like the scorer's (one column per class), for each
        query's `CANDIDATES` best routes (`ranked`: the scorer's scores); 0 elsewhere."""
        gates = np.zeros((len(queries), len(classes)), dtype=np.float32)
        routed = [i for i, name in enumerate(classes) if name in self.routes]
        if not routed:
            return gates
        columns = np.asarray(routed)
        order = np.argsort(-ranked[:, columns], axis=1)[:, :CANDIDATES]
        for column in np.unique(columns[order]):
            rows = np.nonzero((columns[order] == column).any(axis=1))[0]
            gates[rows, column] = self.in_domain(queries[rows], classes[column])
        return gates
