"""The ``sessions`` row of one session, as both the SQLite and PostgreSQL writers store it."""

from __future__ import annotations

from ._session import EnforcementSession

__all__ = ["Row", "session_row", "storable_text"]

#: session_id, timestamp_ms, tenant_id, agent_id, layer, final_decision, decision_name,
#: rules_evaluated, duration_us, intent_summary, deciding_rule_id, session_json.
Row = tuple[str, int, str, str, str, int, str, int, int, str, str, str]


def storable_text(value: str) -> str:
    """``value`` with NUL and lone surrogates replaced by U+FFFD.

    An intent's JSON can carry both (``"\\u0000"``, ``"\\udcff"``) into the agent id or
    the summary; neither encodes to UTF-8 for SQLite, nor fits PostgreSQL's text.
    """
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def session_row(session: EnforcementSession) -> Row:
    """The ``sessions`` row of one session (serialises it: writer thread only)."""
    return (
        storable_text(session.session_id),
        session.timestamp_ms,
        storable_text(session.tenant_id),
        storable_text(session.agent_id),
        storable_text(session.layer),
        session.final_decision,
        session.decision_name,
        session.rules_evaluated,
        session.durations.total_us,
        storable_text(session.summary()),
        storable_text(session.deciding_rule_id),
        session.to_stored_json(),  # orjson, or ASCII json.dumps for what it refuses
    )
