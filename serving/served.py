"""What served a request: the routing decision behind it, the one version the engine ran
(a mixture when several were chosen), and the experiment arm that chose it, if any."""

from __future__ import annotations

from dataclasses import dataclass

from switchboard_lora.registry.experiments.model import Arm, Experiment
from switchboard_lora.registry.records import VersionInfo
from switchboard_lora.router.decision import Decision


@dataclass(frozen=True, slots=True)
class Served:
    """What served a request: the decision behind it, and the one adapter the engine ran
    (a mixture when several were chosen)."""

    decision: Decision
    version: VersionInfo | None
    experiment: Experiment | None = None
    arm: Arm | None = None

    def to_json(self) -> dict[str, object]:
        data = self.decision.to_json()
        data["served"] = (
            {"ref": self.version.ref, "served_name": self.version.served_name}
            if self.version
            else {"ref": "base", "served_name": None}
        )
        if self.experiment is not None and self.arm is not None:
            data["experiment"] = {"name": self.experiment.name, "arm": self.arm.ref}
        return data
