"""A/B tests kept in the registry's database, so every replica sees them: definitions, the
record of every response an arm served (an *exposure*), and feedback tied to exposures by
response id. Promotion moves the `prod` alias and ends the experiment in one transaction.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from switchboard_lora.registry import queries
from switchboard_lora.registry.aliases import point_alias
from switchboard_lora.registry.db import as_utc
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.experiments.model import (
    BASE_ARM,
    SCORE_RANGE,
    Arm,
    Experiment,
    Exposure,
    parse_key,
)
from switchboard_lora.registry.records import VersionInfo
from switchboard_lora.registry.refs import PROD_ALIAS, AdapterRef, validate_name
from switchboard_lora.registry.schema import ArmRow, ExperimentRow, ExposureRow, FeedbackRow

log = logging.getLogger(__name__)


class ExperimentStore:
    def __init__(self, engine: Engine, writer: Engine) -> None:
        self._engine = engine
        self._writer = writer

    def _resolve(self, ref: str) -> VersionInfo:
        with self._engine.connect() as conn:
            return queries.resolve(conn, AdapterRef.parse(ref))

    # ---- definition -----------------------------------------------------------------------

    def create(
        self,
        name: str,
        adapter: str,
        arms: Sequence[tuple[str, float]],
        key: str | None = None,
    ) -> Experiment:
        validate_name(name, "experiment name")
        validate_name(adapter)
        key_header = parse_key(key)
        self._check_shares(arms)
        pinned: list[tuple[str, float]] = []  # refs resolved to `name:N` now, once
        for ref, share in arms:
            if ref == BASE_ARM:
                pinned.append((BASE_ARM, share))
                continue
            if AdapterRef.parse(ref).name != adapter:
                raise SwitchboardError(
                    ErrorCode.INVALID_INPUT, f"arm {ref} is not a version of {adapter}"
                )
            pinned.append((self._resolve(ref).ref, share))
        refs = [ref for ref, _ in pinned]
        if len(set(refs)) != len(refs):
            raise SwitchboardError(ErrorCode.INVALID_INPUT, f"an arm appears twice: {refs}")
        now = datetime.now(UTC)
        try:
            with Session(self._writer) as session, session.begin():
                running = session.scalar(
                    select(ExperimentRow.name).where(
                        ExperimentRow.adapter == adapter, ExperimentRow.stopped_at.is_(None)
                    )
                )
                if running is not None:
                    raise SwitchboardError(
                        ErrorCode.CONFLICT,
                        f"experiment {running} already runs on {adapter}: stop it first",
                    )
                row = ExperimentRow(name=name, adapter=adapter, key_header=key_header)
                row.started_at = now
                session.add(row)
                session.flush()
                for position, (ref, share) in enumerate(pinned):
                    session.add(
                        ArmRow(
                            experiment_id=row.id,
                            position=position,
                            ref=ref,
                            version_id=None if ref == BASE_ARM else _version_id(session, ref),
                            share=share,
                        )
                    )
        except IntegrityError as exc:
            raise SwitchboardError(
                ErrorCode.ALREADY_EXISTS, f"an experiment named {name} exists"
            ) from exc
        log.info("experiment %s started on %s: %s", name, adapter, refs)
        return self.get(name)

    @staticmethod
    def _check_shares(arms: Sequence[tuple[str, float]]) -> None:
        if len(arms) < 2:
            raise SwitchboardError(ErrorCode.INVALID_INPUT, "an experiment needs two arms or more")
        if any(not 0.0 < share <= 1.0 for _, share in arms):
            raise SwitchboardError(ErrorCode.INVALID_INPUT, "every share must be in (0, 1]")
        total = math.fsum(share for _, share in arms)
        if abs(total - 1.0) > 1e-6:
            raise SwitchboardError(ErrorCode.INVALID_INPUT, f"shares must sum to 1, not {total:g}")

    def get(self, name: str) -> Experiment:
        found = self._load(select(ExperimentRow).where(ExperimentRow.name == name))
        if not found:
            raise SwitchboardError(ErrorCode.NOT_FOUND, f"no experiment named {name!r}")
        return found[0]

    def list_experiments(self) -> list[Experiment]:
        return self._load(select(ExperimentRow).order_by(ExperimentRow.id))

    def running(self) -> dict[str, Experiment]:
        """Running experiments by adapter name (at most one each)."""
        query = select(ExperimentRow).where(ExperimentRow.stopped_at.is_(None))
        return {e.adapter: e for e in self._load(query)}

    def _load(self, query: Any) -> list[Experiment]:
        with Session(self._engine) as session:
            rows = session.scalars(query).all()
            arms = session.scalars(
                select(ArmRow)
                .where(ArmRow.experiment_id.in_([r.id for r in rows]))
                .order_by(ArmRow.experiment_id, ArmRow.position)
            ).all()
        by_experiment: dict[int, list[Arm]] = {}
        for arm in arms:
            by_experiment.setdefault(arm.experiment_id, []).append(
                Arm(arm.position, arm.ref, arm.share)
            )
        return [
            Experiment(
                r.id,
                r.name,
                r.adapter,
                r.key_header,
                tuple(by_experiment.get(r.id, [])),
                as_utc(r.started_at),
                as_utc(r.stopped_at) if r.stopped_at else None,
                r.outcome,
            )
            for r in rows
        ]

    def stop(self, name: str, outcome: str = "stopped") -> Experiment:
        with Session(self._writer) as session, session.begin():
            self._end(session, name, outcome)
        return self.get(name)

    def promote(self, name: str, ref: str) -> Experiment:
        """Point the adapter's `prod` alias at an arm's version and end the experiment, in
        one transaction: no request sees the new alias with the experiment still running."""
        experiment = self.get(name)
        if ref == BASE_ARM:
            raise SwitchboardError(
                ErrorCode.INVALID_INPUT,
                "base is not a version to promote: stop the experiment to keep the base",
            )
        version = self._resolve(ref)
        arm_refs = [a.ref for a in experiment.arms if not a.is_base]
        if version.ref not in arm_refs:
            raise SwitchboardError(
                ErrorCode.INVALID_INPUT,
                f"{ref} ({version.ref}) is not an arm of {name}; arms: {', '.join(arm_refs)}",
            )
        with Session(self._writer) as session, session.begin():
            self._end(session, name, f"promoted {version.ref}")
            row = queries.version_row(session, AdapterRef.parse(version.ref))
            point_alias(session, row.adapter_id, PROD_ALIAS, row.id)
        log.info("experiment %s: promoted %s to %s@prod", name, version.ref, experiment.adapter)
        return self.get(name)

    @staticmethod
    def _end(session: Session, name: str, outcome: str) -> None:
        ended = session.execute(
            update(ExperimentRow)
            .where(ExperimentRow.name == name, ExperimentRow.stopped_at.is_(None))
            .values(stopped_at=datetime.now(UTC), outcome=outcome)
        )
        if getattr(ended, "rowcount", 0) != 1:
            exists = session.scalar(select(ExperimentRow.id).where(ExperimentRow.name == name))
            if exists is None:
                raise SwitchboardError(ErrorCode.NOT_FOUND, f"no experiment named {name!r}")
            raise SwitchboardError(ErrorCode.CONFLICT, f"experiment {name} has already ended")

    # ---- records --------------------------------------------------------------------------

    def record(
        self,
        response_id: str,
        experiment: Experiment,
        arm: Arm,
        latency_s: float,
        prompt_tokens: int,
        completion_tokens: int,
        client: str | None = None,
    ) -> None:
        """The response `response_id` was served by `arm`; `client` identifies who received
        it (an API key's fingerprint), the only one who may then give feedback on it."""
        with Session(self._writer) as session, session.begin():
            session.add(
                ExposureRow(
                    response_id=response_id,
                    experiment_id=experiment.id,
                    position=arm.position,
                    latency_s=latency_s,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    created_at=datetime.now(UTC),
                    client=client,
                )
            )

    def feedback(
        self,
        response_id: str,
        *,
        thumbs_up: bool | None = None,
        score: float | None = None,
        label: str | None = None,
        client: str | None = None,
        admin: bool = True,
    ) -> str:
        """Tie feedback to the response it is about; returns the experiment's name. A response
        takes one feedback: a repeat is a conflict (one client must not outvote the rest), and
        only from the `client` it was served to, unless from an `admin`."""
        if thumbs_up is None and score is None:
            raise SwitchboardError(ErrorCode.INVALID_INPUT, "give a thumbs up/down or a score")
        low, high = SCORE_RANGE
        if score is not None and not (low <= score <= high and math.isfinite(score)):
            raise SwitchboardError(
                ErrorCode.INVALID_INPUT, f"score must be between {low:g} and {high:g}"
            )
        try:
            with Session(self._writer) as session, session.begin():
                served = session.execute(
                    select(ExperimentRow.name, ExposureRow.client)
                    .join(ExposureRow, ExposureRow.experiment_id == ExperimentRow.id)
                    .where(ExposureRow.response_id == response_id)
                ).first()
                if served is None:
                    raise SwitchboardError(
                        ErrorCode.NOT_FOUND,
                        f"no response {response_id!r} served in an experiment",
                    )
                experiment, receiver = served
                if not admin and receiver is not None and receiver != client:
                    raise SwitchboardError(
                        ErrorCode.FORBIDDEN,
                        f"response {response_id!r} was served to another key: feedback on it "
                        "comes from that key (or an admin key)",
                    )
                given = session.scalar(
                    select(FeedbackRow.id).where(FeedbackRow.response_id == response_id)
                )
                if given is not None:
                    raise _repeated(response_id)
                session.add(
                    FeedbackRow(
                        response_id=response_id,
                        thumbs_up=thumbs_up,
                        score=score,
                        label=label,
                        created_at=datetime.now(UTC),
                    )
                )
        except IntegrityError as exc:  # a concurrent repeat won the race
            raise _repeated(response_id) from exc
        return experiment

    def exposures(self, name: str) -> list[Exposure]:
        experiment = self.get(name)
        with Session(self._engine) as session:
            rows = session.execute(
                select(ExposureRow).where(ExposureRow.experiment_id == experiment.id)
            ).scalars()
            exposures = {r.response_id: r for r in rows}
            feedback = session.execute(
                select(FeedbackRow.response_id, FeedbackRow.thumbs_up, FeedbackRow.score)
                .join(ExposureRow, ExposureRow.response_id == FeedbackRow.response_id)
                .where(ExposureRow.experiment_id == experiment.id)
            ).all()
        thumbs: dict[str, list[bool]] = {}
        scores: dict[str, list[float]] = {}
        for response_id, up, score in feedback:
            if up is not None:
                thumbs.setdefault(response_id, []).append(bool(up))
            if score is not None:
                scores.setdefault(response_id, []).append(float(score))
        return [
            Exposure(
                r.position,
                r.latency_s,
                r.prompt_tokens,
                r.completion_tokens,
                tuple(thumbs.get(rid, [])),
                tuple(scores.get(rid, [])),
            )
            for rid, r in exposures.items()
        ]


def _version_id(session: Session, ref: str) -> int:
    """The row id of a pinned arm's version (`name:N`), inside the caller's transaction."""
    return queries.version_row(session, AdapterRef.parse(ref)).id


def _repeated(response_id: str) -> SwitchboardError:
    return SwitchboardError(
        ErrorCode.CONFLICT, f"response {response_id!r} already has feedback (one per response)"
    )
