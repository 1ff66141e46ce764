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


@attrs.frozen(eq=True)
class RuleAnchors:
    """The anchors of one rule: up to 16 vectors of 32 float32 in each of 4 slots.

    ``vectors`` is always a read-only ``(4, 16, 32)`` float32 block; rows past a
    slot's count are zero. It may be a view into a memory-mapped warm-storage
    block, which is why it is never copied here. Build instances with
    :meth:`from_slots` (validating) or :meth:`empty`.
    """

    vectors: Float32Array = attrs.field(eq=attrs.cmp_using(eq=_block_eq), repr=False)
    counts: tuple[int, int, int, int]

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

        ``counts``, when given, must agree with the number of vectors in each
        slot (the wire format carries both). Raises :class:`RuleValidationError`
        naming the slot and anchor on the first problem.
        """
        if len(slots) != SLOT_COUNT:
            raise RuleValidationError(
                rule_id, "anchors", f"expected {SLOT_COUNT} slots, got {len(slots)}"
            )
        block = np.zeros(BLOCK_SHAPE, dtype=np.float32)
        found: list[int] = []
        for s, vectors in enumerate(slots):
            name = SLOTS[s]
            if len(vectors) > MAX_ANCHORS:
                raise RuleValidationError(
                    rule_id,
                    f"anchors.{name}_anchors",
                    f"at most {MAX_ANCHORS} anchors, got {len(vectors)}",
                )
            for i, vector in enumerate(vectors):
                if len(vector) != ANCHOR_DIM:
                    raise RuleValidationError(
                        rule_id,
                        f"anchors.{name}_anchors[{i}]",
                        f"anchor vectors have exactly {ANCHOR_DIM} values, got {len(vector)}",
                    )
                # A double beyond float32 range becomes inf (rejected below), not a RuntimeWarning.
                with np.errstate(over="ignore"):
                    row = np.asarray(vector, dtype=np.float32)
                if not np.isfinite(row).all():
                    raise RuleValidationError(
                        rule_id,
                        f"anchors.{name}_anchors[{i}]",
                        "values must be finite (no NaN or inf)",
                    )
                block[s, i] = row
            found.append(len(vectors))
            if counts is not None and counts[s] != len(vectors):
                raise RuleValidationError(
                    rule_id,
                    f"anchors.{name}_count",
                    f"count {counts[s]} disagrees with {len(vectors)} {name} anchor vectors",
                )
        block.flags.writeable = False
        return cls(block, (found[0], found[1], found[2], found[3]))

    def slot(self, slot: int) -> Float32Array:
        """The ``(count, 32)`` vectors of one slot (a read-only view)."""
        return self.vectors[slot, : self.counts[slot]]

    def validate(self, rule_id: str) -> None:
        """Check an already-packed block (e.g. one read back from storage)."""
        if self.vectors.shape != BLOCK_SHAPE or self.vectors.dtype != np.float32:
            raise RuleValidationError(rule_id, "anchors", f"block must be float32 {BLOCK_SHAPE}")
        for s, count in enumerate(self.counts):
            if not 0 <= count <= MAX_ANCHORS:
                raise RuleValidationError(
                    rule_id, f"anchors.{SLOTS[s]}_count", f"must be 0..{MAX_ANCHORS}, got {count}"
                )
        if not np.isfinite(self.vectors).all():
            raise RuleValidationError(rule_id, "anchors", "values must be finite (no NaN or inf)")


_ZERO_BLOCK = np.zeros(BLOCK_SHAPE, dtype=np.float32)
_ZERO_BLOCK.flags.writeable = False
