from __future__ import annotations

import enum
from collections.abc import Sequence

import attrs
import numpy as np
import numpy.typing as npt

from ._errors import RuleValidationError

#: The four anchor slots of a rule, in storage order.
SLOTS: tuple[str, ...] = ("action", "resource", "data", "risk")
SLOT_COUNT = 4
MAX_ANCHORS = 16
ANCHOR_DIM = 32
#: Shape of one rule's anchor block: slot x anchor x component.
BLOCK_SHAPE = (SLOT_COUNT, MAX_ANCHORS, ANCHOR_DIM)
BLOCK_BYTES = SLOT_COUNT * MAX_ANCHORS * ANCHOR_DIM * 4

Float32Array = npt.NDArray[np.float32]
CountArray = npt.NDArray[np.uint8]


class Slot(enum.IntEnum):
    ACTION = 0
    RESOURCE = 1
    DATA = 2
    RISK = 3


def _block_eq(a: Float32Array, b: Float32Array) -> bool:
    # Bitwise equality: -0.0 != 0.0 here, which is what "round-trips exactly" means.
    return a.shape == b.shape and a.tobytes() == b.tobytes()


def _default_sent(self: RuleAnchors) -> tuple[int, int, int, int]:
    return self.counts


@attrs.frozen(eq=True)
class RuleAnchors:
    """The anchors of one rule: up to 16 vectors of 32 float32 in each of 4 slots.

    ``vectors`` is always a read-only ``(4, 16, 32)`` float32 block. In each slot
    the first ``counts[s]`` rows are the anchors that are scored; the next rows,
    up to ``sent[s]``, are padding a client sent (the Guard management plane
    always sends 16 vectors per slot, zero-padded, with the count of real
    anchors). Padding is stored and returned exactly as sent, never scored; rows
    past ``sent[s]`` are zero. ``vectors`` may be a view into a memory-mapped
    warm-storage block, which is why it is never copied here. Build instances
    with :meth:`from_slots` (validating) or :meth:`empty`.
    """

    vectors: Float32Array = attrs.field(eq=attrs.cmp_using(eq=_block_eq), repr=False)
    #: Anchors scored per slot.
    counts: tuple[int, int, int, int]
    #: Vectors sent (stored, returned on the wire) per slot: ``counts[s] <= sent[s] <= 16``.
    sent: tuple[int, int, int, int] = attrs.field(
        default=attrs.Factory(_default_sent, takes_self=True)
    )

    @classmethod
    def empty(cls) -> RuleAnchors:
        return cls(_ZERO_BLOCK, (0, 0, 0, 0))

    @classmethod
    def from_slots(
        cls,
        slots: Sequence[Sequence[Sequence[float]]],
        counts: Sequence[int] | None = None,
        *,
        rule_id: str = "",
    ) -> RuleAnchors:
        """Validate four slots of anchor vectors and pack them into one block.

        ``counts``, when given, says how many of each slot's vectors are anchors
        (the rest are padding); each must be between 0 and the number of vectors
        in its slot. Without ``counts`` every vector is an anchor. Raises
        :class:`RuleValidationError` naming the slot and anchor (with the wire's
        field names) on the first problem.
        """
        if len(slots) != SLOT_COUNT:
            raise RuleValidationError(
                rule_id, "anchors", f"expected {SLOT_COUNT} slots, got {len(slots)}"
            )
        block = np.zeros(BLOCK_SHAPE, dtype=np.float32)
        sent: list[int] = []
        scored: list[int] = []
        for s, vectors in enumerate(slots):
            name = SLOTS[s]
            vectors_field, count_field = f"anchors.{name}_anchors", f"anchors.{name}_count"
            if len(vectors) > MAX_ANCHORS:
                raise RuleValidationError(
                    rule_id, vectors_field, f"at most {MAX_ANCHORS} anchors, got {len(vectors)}"
                )
            for i, vector in enumerate(vectors):
                if len(vector) != ANCHOR_DIM:
                    raise RuleValidationError(
                        rule_id,
                        f"{vectors_field}[{i}]",
                        f"anchor vectors have exactly {ANCHOR_DIM} values, got {len(vector)}",
                    )
                # A double beyond float32 range becomes inf (rejected below), not a RuntimeWarning.
                with np.errstate(over="ignore"):
                    row = np.asarray(vector, dtype=np.float32)
                if not np.isfinite(row).all():
                    raise RuleValidationError(
                        rule_id, f"{vectors_field}[{i}]", "values must be finite (no NaN or inf)"
                    )
                block[s, i] = row
            sent.append(len(vectors))
            count = len(vectors) if counts is None else counts[s]
            if count < 0:
                raise RuleValidationError(rule_id, count_field, f"must be 0 or more, got {count}")
            if count > len(vectors):
                raise RuleValidationError(
                    rule_id,
                    count_field,
                    f"count {count} exceeds the {len(vectors)} {name} anchor vectors sent",
                )
            scored.append(count)
        block.flags.writeable = False
        return cls(
            block,
            (scored[0], scored[1], scored[2], scored[3]),
            (sent[0], sent[1], sent[2], sent[3]),
        )

    def slot(self, slot: int) -> Float32Array:
        """The ``(count, 32)`` anchors of one slot that are scored (a read-only view)."""
        return self.vectors[slot, : self.counts[slot]]

    def sent_slot(self, slot: int) -> Float32Array:
        """The ``(sent, 32)`` vectors of one slot as sent, padding included (a view)."""
        return self.vectors[slot, : self.sent[slot]]

    def validate(self, rule_id: str) -> None:
        """Check an already-packed block (e.g. one read back from storage)."""
        if self.vectors.shape != BLOCK_SHAPE or self.vectors.dtype != np.float32:
            raise RuleValidationError(rule_id, "anchors", f"block must be float32 {BLOCK_SHAPE}")
        for s, (count, sent) in enumerate(zip(self.counts, self.sent, strict=True)):
            if not 0 <= count <= sent <= MAX_ANCHORS:
                raise RuleValidationError(
                    rule_id,
                    f"anchors.{SLOTS[s]}_count",
                    f"need 0 <= count <= vectors sent <= {MAX_ANCHORS}, got count {count} "
                    f"of {sent} vectors",
                )
        if not np.isfinite(self.vectors).all():
            raise RuleValidationError(rule_id, "anchors", "values must be finite (no NaN or inf)")


_ZERO_BLOCK = np.zeros(BLOCK_SHAPE, dtype=np.float32)
_ZERO_BLOCK.flags.writeable = False
