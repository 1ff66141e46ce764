from __future__ import annotations

from ._text import echo


class RuleValidationError(ValueError):
    """A rule (or a batch of rules) is invalid.

    The message names the rule and the field, so a management-plane operator
    can fix the offending rule without guessing (a long id is shortened, see
    :func:`~guardrefresh.model.echo`). ``rule_id`` and ``field`` are
    also available as attributes for callers that map errors to status codes.
    """

    def __init__(self, rule_id: str, field: str, problem: str) -> None:
        self.rule_id = rule_id
        self.field = field
        self.problem = problem
        where = f"rule {echo(rule_id)}" if rule_id else "rule with empty rule_id"
        super().__init__(f"{where}: {field}: {problem}")
