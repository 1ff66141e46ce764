"""An evaluation set: the rules in scope of one (tenant, layer), in evaluation order,
and the vectorised decision over them."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ..model import MAX_ANCHORS
from ._group import Group
from ._part import F32, PASS_ALLOW, PASS_DENY, PASS_FORBIDDEN, Columns, Part
from ._result import SLOT_NAMES, Decision, EnforcementResult, RuleEvidence, deny_result

_new_evidence = functools.partial(tuple.__new__, RuleEvidence)
#: Index -> anchor_matched text; index -1 (no anchor above 0) -> "".
_ANCHOR_TEXT = np.array([str(i) for i in range(MAX_ANCHORS)] + [""], dtype=object)
_SLOT_TEXT = np.array(SLOT_NAMES, dtype=object)


class EvalSet:
    """The union of some groups, assembled for scoring (see the package docstring).

    Valid while every group still has the epoch it had when the set was assembled.
    """

    __slots__ = (
        "cols",
        "deny_pass",
        "drift_on",
        "epochs",
        "groups",
        "n_rows",
        "offsets",
        "order",
        "parts",
        "thresholds",
        "weight_sums",
        "weighted_bar",
        "weights",
    )

    def __init__(self, groups: Sequence[Group]) -> None:
        self.groups = tuple(groups)
        self.epochs = tuple(group.epoch for group in groups)
        self.parts: list[Part] = [part for group in groups for part in group.parts if part.n]
        offsets = [0]
        for part in self.parts:
            offsets.append(offsets[-1] + part.n)
        self.offsets = offsets
        self.n_rows = offsets[-1]
        everything = Columns.concat([part.cols for part in self.parts])
        alive = (
            np.concatenate([part.alive for part in self.parts])
            if self.parts
            else np.zeros(0, dtype=np.bool_)
        )
        rows = np.flatnonzero(alive)
        ids = np.array([everything.ids[i] for i in rows.tolist()], dtype=str)
        id_rank = np.empty(len(rows), dtype=np.int64)
        id_rank[np.argsort(ids, kind="stable")] = np.arange(len(rows))
        # lexsort: the last key is the primary one.
        ranked = np.lexsort((id_rank, -everything.priority[rows], everything.passes[rows]))
        #: Rows of the concatenated parts, in evaluation order (live rows only).
        self.order = rows[ranked]
        cols = self.cols = everything.take(self.order)
        # Per-rule constants of the decision, laid out (4, n) like the similarities.
        self.thresholds = np.ascontiguousarray(cols.thresholds.T)
        self.weights = np.ascontiguousarray(cols.weights.T)
        sums = self.weights.sum(axis=0)
        self.weight_sums = np.where(sums < 1e-8, 1.0, sums)
        with np.errstate(invalid="ignore", over="ignore"):
            self.weighted_bar = (self.thresholds * self.weights).sum(axis=0) / self.weight_sums
        self.deny_pass = cols.passes == PASS_DENY
        self.drift_on = cols.drift > 0

    def __len__(self) -> int:
        return len(self.order)

    @property
    def valid(self) -> bool:
        return all(g.epoch == e for g, e in zip(self.groups, self.epochs, strict=True))

    def evaluate(
        self, intent: list[F32 | None], drift_score: float
    ) -> tuple[EnforcementResult, list[str]]:
        """Decide; also return the ids of the rules the decision read, in order."""
        n = len(self.order)
        if n == 0:
            return deny_result(), []
        raw = np.empty((4, self.n_rows), dtype=np.float32)
        best = np.empty((4, self.n_rows), dtype=np.int16)
        for part, start in zip(self.parts, self.offsets, strict=False):
            stop = start + part.n
            part.score(intent, raw[:, start:stop], best[:, start:stop])
        sims = raw[:, self.order]
        # Fold from 0.0 (negative similarities count as 0) and clamp to 1.
        np.clip(sims, 0.0, 1.0, out=sims)
        cols = self.cols
        with np.errstate(invalid="ignore", over="ignore"):
            weighted = sims * self.weights
            score = weighted.sum(axis=0) / self.weight_sums
            matched = np.where(
                cols.wavg,
                score >= self.weighted_bar,
                (sims >= self.thresholds).all(axis=0),
            )
        drift = self.drift_on & (drift_score > cols.drift)
        # A context_deny rule with a drift threshold denies only when drift exceeds it.
        decisive = ~self.deny_pass | ~self.drift_on | drift
        terminal = cols.invalid | (matched & decisive)
        hits = np.flatnonzero(terminal)
        k = int(hits[0]) if len(hits) else -1
        unscorable = k >= 0 and bool(cols.invalid[k])
        m = n if k < 0 else k if unscorable else k + 1

        trigger = weighted[:, :m].argmax(axis=0)
        columns = np.arange(m)
        anchor = best[trigger, self.order[:m]]
        anchor = np.where(sims[trigger, columns] > 0, anchor, -1)
        evidence = tuple(
            map(
                _new_evidence,
                zip(
                    cols.ids[:m],
                    cols.names[:m],
                    matched[:m].astype(np.int8).tolist(),
                    zip(*sims[:, :m].tolist(), strict=True),
                    _SLOT_TEXT[trigger].tolist(),
                    _ANCHOR_TEXT[anchor].tolist(),
                    cols.threshold_tuples[:m],
                    cols.modes[:m],
                    strict=True,
                ),
            )
        )
        reached = cols.ids[: k + 1] if k >= 0 else cols.ids
        if k < 0:
            mean = sims.astype(np.float64).mean(axis=1)
            return EnforcementResult(Decision.DENY, tuple(mean.tolist()), evidence), reached
        if unscorable:
            return deny_result(cols.errors[k], evidence=evidence), reached
        return self._decided(k, sims, evidence, bool(drift[k])), reached

    def _decided(
        self,
        k: int,
        sims: npt.NDArray[np.float32],
        evidence: tuple[RuleEvidence, ...],
        drifted: bool,
    ) -> EnforcementResult:
        cols = self.cols
        rule_id = cols.ids[k]
        similarities = tuple(sims[:, k].tolist())
        stage = int(cols.passes[k])
        decision = Decision.DENY
        modified = ""
        if stage == PASS_FORBIDDEN:
            drifted = False
        elif stage == PASS_ALLOW:
            if drifted:
                decision = Decision.STEP_UP
            elif cols.specs[k]:
                decision = Decision.MODIFY
                modified = cols.specs[k]
            else:
                decision = Decision.ALLOW
        elif stage != PASS_DENY:
            decision = Decision.DEFER
            drifted = False
        return EnforcementResult(
            decision,
            similarities,
            evidence,
            modified_params=modified,
            drift_triggered=drifted,
            deciding_rule=rule_id,
        )
