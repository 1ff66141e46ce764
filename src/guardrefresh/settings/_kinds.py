"""Kinds of setting: how a value is read from text and TOML and written back.

A :class:`Kind` knows the type of a setting (an integer, seconds, a path...), not its
range: range checks are constraints (:class:`~guardrefresh.settings.Constraint`).
"""

from __future__ import annotations

import math
import pathlib
import urllib.parse
from collections.abc import Callable
from typing import Generic, TypeVar

import attrs

from ._toml import toml_string

__all__ = [
    "BOOLEAN",
    "FRACTION",
    "HOST",
    "INTEGER",
    "OPTIONAL_DSN",
    "OPTIONAL_PATH",
    "OPTIONAL_URL",
    "PATH",
    "SECONDS",
    "Kind",
    "choice",
    "mask_dsn",
]

T = TypeVar("T")


def _is_number(value: object) -> bool:
    # bool is an int subclass, but `port = true` is a mistake, not port 1.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    return _is_number(value) and math.isfinite(value)  # type: ignore[arg-type]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


@attrs.frozen(kw_only=True)
class Kind(Generic[T]):
    """One type of setting: how it is read from text and TOML and written back.

    ``from_text`` reads flag and environment values, ``from_toml`` reads values
    that :mod:`tomllib` produced; both raise :class:`ValueError` (or
    :class:`TypeError`) for input that is not of this kind. Range checks are not
    the kind's business: see :class:`Constraint`.
    """

    #: Used in messages: "allowed: <description> <constraint>".
    description: str
    #: Placeholder of the flag's value in ``--help``.
    metavar: str
    #: True when a Python value is of this kind (validators of the attrs classes).
    accepts: Callable[[object], bool]
    from_text: Callable[[str], T]
    from_toml: Callable[[object], T]
    #: The value as a TOML literal (``--print-config``).
    to_toml: Callable[[T], str]
    #: The value for humans (``--help``, messages).
    to_text: Callable[[T], str] = str

    @property
    def is_switch(self) -> bool:
        """Booleans get a ``--x/--no-x`` flag pair instead of a flag with a value."""
        return self.metavar == ""


def _text_only(parse: Callable[[str], T]) -> Callable[[object], T]:
    def from_toml(value: object) -> T:
        if not isinstance(value, str):
            raise TypeError("not a string")
        return parse(value)

    return from_toml


def _parse_int(text: str) -> int:
    return int(text)


def _int_from_toml(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("not an integer")
    return value


def _parse_float(text: str) -> float:
    return _finite(float(text))


def _float_from_toml(value: object) -> float:
    # `interval = 30` is a TOML integer; a number of seconds may well be written so.
    if not _is_number(value):
        raise TypeError("not a number")
    assert isinstance(value, int | float)
    return _finite(float(value))


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("not a boolean")


def _bool_from_toml(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError("not a boolean")
    return value


def _bool_text(value: bool) -> str:
    return "true" if value else "false"


def _parse_path(text: str) -> pathlib.Path:
    # pathlib.Path("") is ".", which would silently mean "the working directory".
    if not text:
        raise ValueError("empty path")
    return pathlib.Path(text)


def _path_toml(value: pathlib.Path) -> str:
    return toml_string(str(value))


def _identity(text: str) -> str:
    return text


INTEGER: Kind[int] = Kind(
    description="an integer",
    metavar="N",
    accepts=lambda v: isinstance(v, int) and not isinstance(v, bool),
    from_text=_parse_int,
    from_toml=_int_from_toml,
    to_toml=str,
)
SECONDS: Kind[float] = Kind(
    description="a number of seconds",
    metavar="SECONDS",
    accepts=_is_finite_number,
    from_text=_parse_float,
    from_toml=_float_from_toml,
    to_toml=repr,
)
FRACTION: Kind[float] = attrs.evolve(SECONDS, description="a number", metavar="FRACTION")
BOOLEAN: Kind[bool] = Kind(
    description="a boolean (true/false, yes/no, on/off, 1/0)",
    metavar="",
    accepts=lambda v: isinstance(v, bool),
    from_text=_parse_bool,
    from_toml=_bool_from_toml,
    to_toml=_bool_text,
    to_text=_bool_text,
)
HOST: Kind[str] = Kind(
    description="a host name or IP address",
    metavar="HOST",
    accepts=lambda v: isinstance(v, str),
    from_text=_identity,
    from_toml=_text_only(_identity),
    to_toml=toml_string,
)
PATH: Kind[pathlib.Path] = Kind(
    description="a file path",
    metavar="PATH",
    accepts=lambda v: isinstance(v, pathlib.Path),
    from_text=_parse_path,
    from_toml=_text_only(_parse_path),
    to_toml=_path_toml,
)


def _parse_optional_path(text: str) -> pathlib.Path | None:
    # An empty value means "not set", so an environment or TOML value can unset a file.
    return pathlib.Path(text) if text else None


def _optional_path_toml(value: pathlib.Path | None) -> str:
    return toml_string("" if value is None else str(value))


OPTIONAL_PATH: Kind[pathlib.Path | None] = Kind(
    description='a file path ("" = not set)',
    metavar="PATH",
    accepts=lambda v: v is None or isinstance(v, pathlib.Path),
    from_text=_parse_optional_path,
    from_toml=_text_only(_parse_optional_path),
    to_toml=_optional_path_toml,
    to_text=lambda v: "" if v is None else str(v),
)


def choice(*choices: str, metavar: str, upper: bool) -> Kind[str]:
    """One of *choices*, read in any case and kept upper- (or lower-) case."""

    def parse(text: str) -> str:
        value = text.upper() if upper else text.lower()
        if value not in choices:
            raise ValueError("not one of the choices")
        return value

    return Kind(
        description=f"one of {', '.join(choices)} (any case)",
        metavar=metavar,
        accepts=lambda v: v in choices,
        from_text=parse,
        from_toml=_text_only(parse),
        to_toml=toml_string,
    )


def _parse_optional_url(text: str) -> str | None:
    # Empty means "not set", so an environment or TOML value can unset it.
    text = text.strip()
    if not text:
        return None
    if not _is_http_url(text):
        raise ValueError("not an http(s) URL")
    return text


def _is_http_url(value: object) -> bool:
    if not isinstance(value, str) or any(ch.isspace() for ch in value):
        return False
    parts = urllib.parse.urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query


OPTIONAL_URL: Kind[str | None] = Kind(
    description='an http:// or https:// URL without a query ("" = not set)',
    metavar="URL",
    accepts=lambda v: v is None or _is_http_url(v),
    from_text=_parse_optional_url,
    from_toml=_text_only(_parse_optional_url),
    to_toml=lambda v: toml_string("" if v is None else v),
    to_text=lambda v: "" if v is None else v,
)


def mask_dsn(dsn: str) -> str:
    """``dsn`` with the password in its user info replaced by ``***`` (for logs)."""
    parts = urllib.parse.urlsplit(dsn)
    if parts.password is None:
        return dsn
    user_info, _, host = parts.netloc.rpartition("@")
    user = user_info.split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _is_postgres_url(value: object) -> bool:
    if not isinstance(value, str) or not value or any(ch.isspace() for ch in value):
        return False
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        return False
    return parts.scheme in ("postgresql", "postgres")


def _parse_optional_dsn(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    if not _is_postgres_url(text):
        raise ValueError("not a postgresql:// URL")
    return text


OPTIONAL_DSN: Kind[str | None] = Kind(
    description='a postgresql:// URL ("" = not set)',
    metavar="URL",
    accepts=lambda v: v is None or _is_postgres_url(v),
    from_text=_parse_optional_dsn,
    from_toml=_text_only(_parse_optional_dsn),
    # A password written into the URL is never shown (--print-config, --help).
    to_toml=lambda v: toml_string("" if v is None else mask_dsn(v)),
    to_text=lambda v: "" if v is None else mask_dsn(v),
)
