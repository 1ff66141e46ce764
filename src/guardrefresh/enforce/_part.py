"""A block of rules ready to score: normalised anchors plus the columns a decision needs.

A :class:`Part` is built once from warm-storage rows (anchors copied out of the
memory-mapped segment, normalised, padding rows zeroed) and then scores any number
of intents with one matrix-vector product per slot. Rows are never removed from a
part; a removed or replaced rule is marked dead in :attr:`Part.alive` and skipped
when evaluation sets are assembled.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ..model import ANCHOR_DIM, POLICY_CODES, PolicyType
from ..storage import Segment
from ._params import DEFAULT_WEIGHTS, Quad, RuleScoring

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]

#: Below this norm a vector scores 0 against anything (as in the original).
MIN_NORM = 1e-8

#: Evaluation pass of each stored policy code: forbidden, context_deny, context_allow,
#: context_defer are passes 0, 1, 2, 3.
PASS_FORBIDDEN, PASS_DENY, PASS_ALLOW, PASS_DEFER = 0, 1, 2, 3
_PASS_OF_POLICY = {
    PolicyType.FORBIDDEN: PASS_FORBIDDEN,
    PolicyType.CONTEXT_DENY: PASS_DENY,
    PolicyType.CONTEXT_ALLOW: PASS_ALLOW,
    PolicyType.CONTEXT_DEFER: PASS_DEFER,
}
PASS_OF_CODE = np.zeros(max(POLICY_CODES.values()) + 1, dtype=np.int8)
for _policy, _code in POLICY_CODES.items():
    PASS_OF_CODE[_code] = _PASS_OF_POLICY[_policy]

#: What a part needs from a rule's params, looked up once per rule content: thresholds,
#: mode, name, error (see RuleScoring) and modification_spec. A plain tuple of atomic
#: values on purpose: the garbage collector stops tracking those, and a large heap of
#: tracked objects makes every full collection (which evidence building triggers) slower.
RuleMeta = tuple[Quad, str, str, str, str]


def rule_meta(scoring: RuleScoring, spec: str) -> RuleMeta:
    return (scoring.thresholds, scoring.mode, scoring.name, scoring.error, spec)


MetaLookup = Callable[[Segment, int], RuleMeta]


class Columns:
    """Per-rule values in one row order. Lists feed the evidence, arrays the maths."""

    __slots__ = (
        "drift",
        "errors",
        "ids",
        "invalid",
        "modes",
        "names",
        "passes",
        "priority",
        "specs",
        "threshold_tuples",
        "thresholds",
        "wavg",
        "weights",
    )

    ids: list[str]
    names: list[str]
    modes: list[str]
    errors: list[str]
    specs: list[str]
    threshold_tuples: list[Quad]
    passes: npt.NDArray[np.int8]
    priority: Ints
    drift: F64
    #: (n, 4) slice weights and thresholds, as float64 of their float32 values.
    weights: F64
    thresholds: F64
    wavg: Bools
    invalid: Bools

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def concat(cls, parts: Sequence[Columns]) -> Columns:
        out = cls()
        for name in ("ids", "names", "modes", "errors", "specs", "threshold_tuples"):
            merged: list[Any] = []
            for part in parts:
                merged.extend(getattr(part, name))
            setattr(out, name, merged)
        for name in ("passes", "priority", "drift", "weights", "thresholds", "wavg", "invalid"):
            arrays = [getattr(part, name) for part in parts]
            setattr(out, name, np.concatenate(arrays) if arrays else _empty(name))
        return out

    def take(self, rows: npt.NDArray[np.intp]) -> Columns:
        out = Columns()
        picks = rows.tolist()
        for name in ("ids", "names", "modes", "errors", "specs", "threshold_tuples"):
            setattr(out, name, _pick(getattr(self, name), picks))
        for name in ("passes", "priority", "drift", "weights", "thresholds", "wavg", "invalid"):
            setattr(out, name, getattr(self, name)[rows])
        return out


def _pick(values: list[Any], picks: list[int]) -> list[Any]:
    """``[values[i] for i in picks]``, at C speed (itemgetter) for the long lists of sets."""
    if len(picks) < 2:
        return [values[i] for i in picks]
    return list(operator.itemgetter(*picks)(values))


def _empty(name: str) -> npt.NDArray[Any]:
    shapes: dict[str, tuple[tuple[int, ...], Any]] = {
        "passes": ((0,), np.int8),
        "priority": ((0,), np.int64),
        "drift": ((0,), np.float64),
        "weights": ((0, 4), np.float64),
        "thresholds": ((0, 4), np.float64),
        "wavg": ((0,), np.bool_),
        "invalid": ((0,), np.bool_),
    }
    shape, dtype = shapes[name]
    return np.zeros(shape, dtype=dtype)


class Part:
    """Normalised anchors and columns of some rules (see the module docstring)."""

    __slots__ = ("_scratch", "alive", "anchors", "cols", "n", "widths")

    def __init__(self, cols: Columns, anchors: list[F32 | None], widths: tuple[int, ...]) -> None:
        self.cols = cols
        self.n = len(cols)
        #: Per slot: (width * n, 32) float32, anchor-major (all rules' anchor 0, then all
        #: rules' anchor 1, ...), unit rows (zero rows for padding and zero-norm anchors),
        #: or None when no rule here has an anchor in that slot. Anchor-major makes the
        #: best-anchor reduction run across rules (long rows) rather than along 16-wide
        #: rows: measured 12 % faster for 10,000 rules.
        self.anchors = anchors
        self.widths = widths
        self.alive: Bools = np.ones(self.n, dtype=np.bool_)
        # Reused output of the products (scoring is synchronous, one call at a time).
        self._scratch: F32 | None = None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.anchors if a is not None) + 160 * self.n

    @classmethod
    def from_rows(
        cls, picks: Sequence[tuple[Segment, npt.NDArray[np.intp]]], meta_of: MetaLookup
    ) -> Part:
        """Copy and normalise the rules at ``rows`` of each segment (in that order)."""
        picks = [(seg, rows) for seg, rows in picks if len(rows)]
        ids: list[str] = []
        metas: list[RuleMeta] = []
        for seg, rows in picks:
            seg_ids = seg.ids
            for row in rows.tolist():
                ids.append(seg_ids[row])
                metas.append(meta_of(seg, row))
        n = len(ids)
        if picks:
            fixed = np.concatenate([seg.fixed[rows] for seg, rows in picks])
            block = np.concatenate([seg.anchors[rows] for seg, rows in picks])
        else:
            fixed = None
            block = np.zeros((0, 4, 16, ANCHOR_DIM), dtype=np.float32)
        cols = Columns()
        cols.ids = ids
        cols.threshold_tuples = [meta[0] for meta in metas]
        cols.modes = [meta[1] for meta in metas]
        cols.names = [meta[2] for meta in metas]
        cols.errors = [meta[3] for meta in metas]
        cols.specs = [meta[4] for meta in metas]
        cols.wavg = np.array([m == "weighted-avg" for m in cols.modes], dtype=np.bool_)
        cols.invalid = np.array([bool(e) for e in cols.errors], dtype=np.bool_)
        cols.thresholds = np.array(cols.threshold_tuples, dtype=np.float64).reshape(n, 4)
        if fixed is None:
            counts = np.zeros((0, 4), dtype=np.int64)
            for name in ("passes", "priority", "drift", "weights"):
                setattr(cols, name, _empty(name))
        else:
            counts = fixed["counts"].astype(np.int64)
            cols.passes = PASS_OF_CODE[fixed["policy"]]
            cols.priority = fixed["priority"].astype(np.int64)
            cols.drift = fixed["drift_threshold"].astype(np.float64)
            has = fixed["has_weights"].astype(np.bool_)
            cols.weights = np.where(
                has[:, None],
                fixed["slice_weights"].astype(np.float64),
                np.array(DEFAULT_WEIGHTS, dtype=np.float64),
            )
        anchors: list[F32 | None] = []
        widths: list[int] = []
        for s in range(4):
            width = int(counts[:, s].max()) if n else 0
            widths.append(width)
            anchors.append(_normalised(block[:, s, :width], counts[:, s]) if width else None)
        return cls(cols, anchors, tuple(widths))

    @classmethod
    def merge(cls, parts: Sequence[Part]) -> Part:
        """One part holding the live rows of ``parts``, in order."""
        keep = [np.flatnonzero(part.alive) for part in parts]
        cols = Columns.concat(
            [part.cols.take(rows) for part, rows in zip(parts, keep, strict=True)]
        )
        anchors: list[F32 | None] = []
        widths: list[int] = []
        for s in range(4):
            width = max(
                (part.widths[s] for part, rows in zip(parts, keep, strict=True) if len(rows)),
                default=0,
            )
            widths.append(width)
            if not width:
                anchors.append(None)
                continue
            pieces = []
            for part, rows in zip(parts, keep, strict=True):
                block = np.zeros((width, len(rows), ANCHOR_DIM), dtype=np.float32)
                own = part.anchors[s]
                if own is not None and len(rows):
                    w = part.widths[s]
                    block[:w] = own.reshape(w, part.n, ANCHOR_DIM)[:, rows]
                pieces.append(block)
            merged = np.concatenate(pieces, axis=1)
            anchors.append(np.ascontiguousarray(merged.reshape(-1, ANCHOR_DIM)))
        return cls(cols, anchors, tuple(widths))

    def score(self, intent: list[F32 | None], sims: F32, best: npt.NDArray[np.int16]) -> None:
        """Write each rule's best raw cosine per slot into ``sims`` (4, n) and the index of
        the anchor that gave it into ``best`` (4, n). Slots without anchors (or with a
        zero intent slice) score 0 with index -1. Raw: not yet floored at 0 nor clamped."""
        n = self.n
        for s in range(4):
            width = self.widths[s]
            anchors = self.anchors[s]
            query = intent[s]
            if anchors is None or query is None:
                sims[s] = 0.0
                best[s] = -1
                continue
            scratch = self._scratch
            if scratch is None or len(scratch) < n * width:
                scratch = self._scratch = np.empty(n * max(self.widths), dtype=np.float32)
            # Single-threaded on purpose: a BLAS pool that needs the other core stalls the
            # event loop whenever that core is busy (measured: median 28 ms instead of
            # 3.6 ms for 10,000 rules on a shared 2-core machine).
            dots = np.einsum("ij,j->i", anchors, query, out=scratch[: n * width])
            dots = dots.reshape(width, n)
            if width == 1:
                sims[s] = dots[0]
                best[s] = 0
            else:
                top = dots.max(axis=0)
                sims[s] = top
                best[s] = (dots == top).argmax(axis=0)


def _normalised(vectors: F32, counts: Ints) -> F32:
    """(n, width, 32) anchors -> (width * n, 32) float32 unit rows, anchor-major; rows at
    or past a rule's count, and rows with a norm below :data:`MIN_NORM`, become zero."""
    n, width, _ = vectors.shape
    wide = vectors.astype(np.float64)
    norms = np.sqrt(np.einsum("nkd,nkd->nk", wide, wide))
    real = (np.arange(width)[None, :] < counts[:, None]) & (norms >= MIN_NORM)
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=real)
    wide *= scale[:, :, None]
    return np.ascontiguousarray(wide.transpose(1, 0, 2), dtype=np.float32).reshape(
        width * n, ANCHOR_DIM
    )


def normalised_intent(vector: npt.ArrayLike) -> list[F32 | None]:
    """The four unit intent slices (None for a slice whose norm is below MIN_NORM).

    Raises ValueError unless ``vector`` is 128 finite numbers.
    """
    with np.errstate(over="ignore"):
        array = np.asarray(vector, dtype=np.float32)
    if array.shape != (4 * ANCHOR_DIM,):
        raise ValueError(f"the intent vector must be 128 floats, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("the intent vector must be finite (no NaN or infinity)")
    wide = array.astype(np.float64).reshape(4, ANCHOR_DIM)
    norms = np.sqrt(np.einsum("sd,sd->s", wide, wide))
    return [
        (wide[s] / norms[s]).astype(np.float32) if norms[s] >= MIN_NORM else None for s in range(4)
    ]
