"""A/B tests at serving time, in one place: which arm serves a request (running experiments
read at most once a second, arms' versions resolved once, an arm that cannot be served taken
out of rotation), and the exposure record of each answer an arm served, which feedback is
later tied to."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from switchboard_lora.registry.errors import SwitchboardError
from switchboard_lora.registry.experiments.model import Experiment
from switchboard_lora.registry.records import VersionInfo
from switchboard_lora.registry.store import Registry
from switchboard_lora.router.decision import Choice, Decision
from switchboard_lora.serving.engines.interface import Generation
from switchboard_lora.serving.served import Served

log = logging.getLogger(__name__)

REFRESH_S = 1.0  # how stale a replica's view of the running experiments may be


@dataclass
class ExperimentArms:
    registry: Registry
    admit: Callable[[VersionInfo], object]  # raises when this server cannot serve a version
    _experiments: dict[str, Experiment] = field(default_factory=dict)  # by adapter name
    _read: float = -math.inf
    _arms: dict[tuple[int, int], VersionInfo] = field(default_factory=dict)
    _out_of_rotation: dict[int, frozenset[int]] = field(default_factory=dict)

    def split(
        self, decision: Decision, version: VersionInfo, headers: Mapping[str, str]
    ) -> Served | None:
        """The arm serving a decision for one adapter (`version`, its live one), when an
        experiment runs on it (None: no experiment; that version serves)."""
        experiment = self._running().get(version.name)
        if experiment is None:
            return None
        key = headers.get(experiment.key_header) if experiment.key_header else None
        while True:
            excluded = self._out_of_rotation.get(experiment.id, frozenset())
            arm = experiment.assign(key, excluded)
            if arm is None:  # every arm is out: the adapter's live version serves
                return Served(decision, version)
            if arm.is_base:
                return Served(_serving(decision, None), None, experiment, arm)
            try:
                chosen = self._arms.get((experiment.id, arm.position))
                if chosen is None:
                    chosen = self.registry.resolve(arm.ref)
                    self.admit(chosen)  # verified, and servable here
                    self._arms[(experiment.id, arm.position)] = chosen
                return Served(_serving(decision, chosen), chosen, experiment, arm)
            except SwitchboardError as exc:
                log.error(
                    "experiment %s: arm %s leaves rotation: %s", experiment.name, arm.ref, exc
                )
                self._out_of_rotation[experiment.id] = excluded | {arm.position}

    def expose(
        self,
        response_id: str,
        served: Served,
        seconds: float,
        answer: Generation,
        client: str | None = None,
    ) -> None:
        """The durable record of an answer an arm served (nothing for any other answer), and
        who it went to (`client`, a key's fingerprint: the one who may rate it)."""
        if served.experiment is None or served.arm is None:
            return
        self.registry.experiments.record(
            response_id,
            served.experiment,
            served.arm,
            seconds,
            answer.prompt_tokens,
            len(answer.token_ids),
            client,
        )

    def _running(self) -> dict[str, Experiment]:
        """Running experiments, re-read at most once a second (every replica sees a change
        within that; arms' versions are re-resolved with it, so a deleted one drops out)."""
        now = time.monotonic()
        if now - self._read > REFRESH_S:
            self._experiments = self.registry.experiments.running()
            self._read = now
            self._arms.clear()
        return self._experiments


def _serving(decision: Decision, arm: VersionInfo | None) -> Decision:
    """The decision as the arm carried it out: its fields name the version that served (the
    router's own choice is what the review loop logged, before the split)."""
    if arm is None:
        return replace(decision, kind="base", choices=())
    return replace(decision, choices=(Choice(arm, decision.route),))
