"""Which routing decisions the server logs for review (`SWITCHBOARD_ROUTE_LOG`): none (the
default: request text is kept only by an operator's choice), a random sample, the uncertain
ones, or all. Logged decisions wait in the registry for `switchboard route review`."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from switchboard_lora.registry.decision_log import UNCERTAIN_MARGIN, DecisionLog
from switchboard_lora.router.decision import Decision
from switchboard_lora.serving.settings import LogMode

log = logging.getLogger(__name__)


@dataclass
class DecisionRecorder:
    decisions: DecisionLog
    mode: LogMode
    sample: float = 0.05  # the share logged in `sample` mode
    _rng: random.Random = field(default_factory=random.Random)

    def wants(self, decision: Decision) -> bool:
        if self.mode == "all":
            return True
        if self.mode == "sample":
            return self._rng.random() < self.sample
        if self.mode == "uncertain":
            return decision.margin is not None and decision.margin < UNCERTAIN_MARGIN
        return False

    def __call__(self, text: str, decision: Decision) -> None:
        """Log the decision if the mode wants it. A failure to log fails no request."""
        if not self.wants(decision):
            return
        try:
            self.decisions.record(
                text,
                decision.kind,
                decision.route,
                decision.in_domain,
                decision.margin,
                decision.scores,
            )
        except Exception:
            log.exception("a routing decision could not be logged")
