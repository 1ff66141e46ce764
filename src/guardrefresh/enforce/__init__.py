"""Enforce: the intent of a request, its encoding by the management plane, the decision."""

from ._encoder import (
    ENCODE_FAILURE_REASONS,
    INTENT_DIM,
    EncodeError,
    IntentEncoder,
    open_intent_encoder,
)
from ._intent import MAX_DEPTH, Intent, IntentError, parse_intent

__all__ = [
    "ENCODE_FAILURE_REASONS",
    "INTENT_DIM",
    "MAX_DEPTH",
    "EncodeError",
    "Intent",
    "IntentEncoder",
    "IntentError",
    "open_intent_encoder",
    "parse_intent",
]
