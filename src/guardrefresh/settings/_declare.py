"""Declaring settings: one attrs field per setting, one class per TOML section.

A section class is an ordinary frozen attrs class whose setting fields are made with
:func:`setting` (or :func:`derived_setting`) and which is marked with :func:`section`::

    @section("logging", flag_prefix="log")
    @attrs.frozen(kw_only=True)
    class LoggingConfig:
        level: str = setting(LOG_LEVEL, "INFO", help="Least severe level logged.")

That field is the whole declaration of the setting: its TOML key (``[logging] level``),
its flag (``--log-level``) and environment variable (``GUARDREFRESH_LOG_LEVEL``), its
type, default, range and help. :func:`settings_of` turns a section class into
:class:`Setting` rows, from which the configuration package generates the command line,
``--help``, the sources and ``--print-config``. Fields made with plain
:func:`attrs.field` are not settings (tuning kept out of users' reach).

Names follow one pattern: the flag is ``--`` + flag prefix + key with dashes, the
environment variable ``GUARDREFRESH_`` + the same in upper case with underscores; a
boolean named ``enabled`` turns its whole section on or off and is named after the
section (``--telemetry/--no-telemetry``, ``GUARDREFRESH_TELEMETRY_ENABLED``). A setting
whose names read better otherwise gives its own *stem* (``stem="max_replication_lag"``:
``--max-replication-lag``, ``GUARDREFRESH_MAX_REPLICATION_LAG``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import attrs

from ._errors import ConfigError
from ._kinds import Kind
from ._toml import toml_key

__all__ = [
    "ANYTHING",
    "ENV_PREFIX",
    "NON_EMPTY_NO_SPACE",
    "Constraint",
    "Setting",
    "above",
    "at_least",
    "between",
    "derived_setting",
    "section",
    "section_name",
    "setting",
    "settings_of",
]

T = TypeVar("T")
C = TypeVar("C", bound=type[Any])

#: Every environment variable of the service starts with this.
ENV_PREFIX = "GUARDREFRESH_"

# Where a field keeps its declaration (attrs metadata) and a class its section.
_SPEC = "guardrefresh.setting"
_SECTION = "__guardrefresh_section__"


@attrs.frozen
class Constraint:
    """A range check on an already typed value, with its wording for messages."""

    test: Callable[[Any], bool]
    #: Appended to the kind's description: "an integer" + " from 0 to 65535".
    text: str = ""


ANYTHING = Constraint(lambda _v: True)
NON_EMPTY_NO_SPACE = Constraint(
    lambda v: bool(v) and not any(ch.isspace() for ch in v), "(non-empty, no spaces)"
)


def between(low: float, high: float) -> Constraint:
    """*low* <= value <= *high*."""
    return Constraint(lambda v: low <= v <= high, f"from {low:g} to {high:g}")


def at_least(low: float) -> Constraint:
    """value >= *low*."""
    return Constraint(lambda v: v >= low, f">= {low:g}")


def above(low: float) -> Constraint:
    """value > *low* (NaN is not)."""
    return Constraint(lambda v: v > low, f"> {low:g}")


@attrs.frozen(kw_only=True)
class _Spec(Generic[T]):
    """What a setting field carries in its metadata."""

    kind: Kind[T]
    help: str
    constraint: Constraint
    #: For a default computed from other settings: how to show it.
    derived: str | None
    #: Flag and environment names from this instead of prefix + key.
    stem: str | None

    @property
    def allowed(self) -> str:
        return f"{self.kind.description} {self.constraint.text}".strip()

    def is_valid(self, value: object) -> bool:
        return self.kind.accepts(value) and bool(self.constraint.test(value))


@attrs.frozen
class _Section:
    name: str
    flag_prefix: str


def section_name(cls: type) -> str:
    """The TOML section of a class marked with :func:`section`."""
    info = getattr(cls, _SECTION, None)
    if not isinstance(info, _Section):
        raise TypeError(f"{cls.__qualname__} is not a settings section (see section())")
    return info.name


def _check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    spec: _Spec[Any] = attribute.metadata[_SPEC]
    if not spec.is_valid(value):
        name = f"{section_name(type(instance))}.{attribute.name}"
        raise ConfigError(f"{name}: invalid value {value!r}; allowed: {spec.allowed}")


def setting(
    kind: Kind[T],
    default: T,
    *,
    help: str,
    constraint: Constraint = ANYTHING,
    stem: str | None = None,
    repr: bool = True,
) -> T:
    """An attrs field that is a setting of *kind* with a fixed *default*.

    *stem* replaces prefix + key in the flag and environment names; *repr* False keeps
    the value out of the class's ``repr`` (secrets). Constructing the class with a value of the wrong kind or out of range raises
    :class:`ConfigError` ("server.port: invalid value 70000; allowed: an integer from
    0 to 65535"). A default that is itself not allowed is a programming error: it
    raises :class:`TypeError` when the class is defined.
    """
    spec = _Spec(kind=kind, help=help, constraint=constraint, derived=None, stem=stem)
    if not spec.is_valid(default):
        raise TypeError(f"default {default!r} is not allowed: {spec.allowed}")
    # attrs.field() is typed as returning the field's type (it returns a placeholder
    # that @attrs.frozen turns into the attribute), so the class sees a T.
    field: T = attrs.field(default=default, validator=_check, repr=repr, metadata={_SPEC: spec})
    return field


def derived_setting(
    kind: Kind[T],
    derive: Callable[[Any], T],
    *,
    shown: str,
    help: str,
    constraint: Constraint = ANYTHING,
) -> T:
    """Like :func:`setting`, but the default is ``derive(instance)``, computed from the
    fields declared before it; *shown* says how, in ``--help`` and ``--print-config``.

    *derive* sees the earlier fields before they are validated, so it must not fail on
    a bad value (that value's own error is reported first).
    """
    spec = _Spec(kind=kind, help=help, constraint=constraint, derived=shown, stem=None)
    field: T = attrs.field(
        default=attrs.Factory(derive, takes_self=True), validator=_check, metadata={_SPEC: spec}
    )
    return field


def section(name: str, *, flag_prefix: str = "") -> Callable[[C], C]:
    """Mark an attrs class as the settings of TOML section ``[name]``.

    *flag_prefix* goes before each key in the flag and the environment variable
    (``log`` makes ``[logging] level`` into ``--log-level``). Apply it on top of
    ``@attrs.frozen``.
    """

    def mark(cls: C) -> C:
        # Not attrs.has(): it is a type guard that would narrow the returned type.
        if getattr(cls, "__attrs_attrs__", None) is None:
            raise TypeError(f"@section needs an attrs class, not {cls.__qualname__}")
        setattr(cls, _SECTION, _Section(name, flag_prefix))
        return cls

    return mark


@attrs.frozen(kw_only=True)
class Setting(Generic[T]):
    """One setting as every source sees it: generated from its field by :func:`settings_of`."""

    section: str
    key: str
    #: For a switch, the positive flag; ``--no-<rest>`` is generated next to it.
    flag: str
    env: str
    kind: Kind[T]
    #: The value when every setting is left at its default.
    default: T
    help: str
    constraint: Constraint
    #: For a default computed from other settings: how it is computed.
    derived: str | None = None

    @property
    def name(self) -> str:
        """``section.key``: the setting's identity everywhere in this package."""
        return f"{self.section}.{self.key}"

    @property
    def toml_name(self) -> str:
        """How users see the TOML location: ``[section] key``."""
        return f"[{self.section}] {toml_key(self.key)}"

    @property
    def negative_flag(self) -> str | None:
        """``--no-<flag>`` for switches, None otherwise."""
        return "--no-" + self.flag[2:] if self.kind.is_switch else None

    @property
    def allowed(self) -> str:
        """What values are allowed, for messages and ``--help``."""
        return f"{self.kind.description} {self.constraint.text}".strip()

    @property
    def default_text(self) -> str:
        """The default for ``--help``: the value, or how it is derived."""
        return self.derived or self.kind.to_text(self.default)

    @property
    def default_toml(self) -> str:
        """The default for ``--print-config``'s comments: a TOML literal, or how it is derived."""
        return self.derived or self.kind.to_toml(self.default)

    def is_valid(self, value: object) -> bool:
        """True when *value* is of the right kind and within range."""
        return self.kind.accepts(value) and bool(self.constraint.test(value))


def _names(info: _Section, key: str, spec: _Spec[Any]) -> tuple[str, str]:
    if spec.stem is not None:
        return "--" + spec.stem.replace("_", "-"), ENV_PREFIX + spec.stem.upper()
    if key == "enabled" and spec.kind.is_switch:
        # The switch of a whole section is named after it: --telemetry/--no-telemetry.
        return f"--{info.name}", f"{ENV_PREFIX}{info.name.upper()}_ENABLED"
    stem = f"{info.flag_prefix}_{key}" if info.flag_prefix else key
    return "--" + stem.replace("_", "-"), ENV_PREFIX + stem.upper()


def settings_of(cls: type) -> tuple[Setting[Any], ...]:
    """The settings a section class declares, in field order."""
    section_name(cls)  # raises for an unmarked class
    info: _Section = getattr(cls, _SECTION)
    defaults = cls()
    rows: list[Setting[Any]] = []
    for field in attrs.fields(cls):
        spec: _Spec[Any] | None = field.metadata.get(_SPEC)
        if spec is None:
            continue
        flag, env = _names(info, field.name, spec)
        rows.append(
            Setting(
                section=info.name,
                key=field.name,
                flag=flag,
                env=env,
                kind=spec.kind,
                default=getattr(defaults, field.name),
                help=spec.help,
                constraint=spec.constraint,
                derived=spec.derived,
            )
        )
    return tuple(rows)
