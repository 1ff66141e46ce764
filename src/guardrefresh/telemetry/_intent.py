"""The intent JSON as a session keeps it: capped, summarised, and who it came from."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["INTENT_JSON_LIMIT", "cap_intent_json", "intent_identity", "intent_summary"]

#: The intent JSON kept in a session, in UTF-8 bytes; longer ones are cut and marked.
INTENT_JSON_LIMIT: Final = 16 * 1024


def cap_intent_json(text: str) -> tuple[str, bool]:
    """``(text, False)``, or its first :data:`INTENT_JSON_LIMIT` bytes and True.

    The cut falls on a character boundary; the result is no longer valid JSON, which is
    why the session says ``intent_truncated``.
    """
    if len(text) <= INTENT_JSON_LIMIT // 4:  # 4 bytes per character at most: surely short
        return text, False
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= INTENT_JSON_LIMIT:
        return text, False
    return data[:INTENT_JSON_LIMIT].decode("utf-8", "ignore"), True


def intent_summary(intent_json: str) -> str:
    """``tool_name``, else ``action``, of an intent JSON; ``"unknown"`` otherwise (as the original)."""
    try:
        intent = json.loads(intent_json)
    except (ValueError, RecursionError):
        return "unknown"
    if isinstance(intent, dict):
        for key in ("tool_name", "action"):
            value = intent.get(key)
            if isinstance(value, str):
                return value
    return "unknown"


def intent_identity(intent: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(tenant, agent, layer)`` of a parsed intent event.

    The agent is ``rate_limit_context.agentId`` (``agent_id`` accepted too), else
    ``actor.id``; missing values are ``""``.
    """

    def text(value: object) -> str:
        return value if isinstance(value, str) else ""

    tenant = text(intent.get("tenant_id")) or text(intent.get("tenantId"))
    agent = ""
    context = intent.get("rate_limit_context")
    if isinstance(context, Mapping):
        agent = text(context.get("agentId")) or text(context.get("agent_id"))
    if not agent:
        actor = intent.get("actor")
        if isinstance(actor, Mapping):
            agent = text(actor.get("id"))
    return tenant, agent, text(intent.get("layer"))
