"""How a setting is declared: its kind, range, default, help and names, in one field.

The vocabulary shared by every package that has settings (the refresh scheduler's
:class:`~guardrefresh.refresh.SchedulerConfig`, the service's sections in
:mod:`guardrefresh.config`), kept below them all so each declares its own settings
once. Reading the sources (flags, environment, TOML) is :mod:`guardrefresh.config`'s.
"""

from ._declare import (
    ANYTHING,
    ENV_PREFIX,
    NON_EMPTY_NO_SPACE,
    Constraint,
    Setting,
    above,
    at_least,
    between,
    derived_setting,
    section,
    section_name,
    setting,
    settings_of,
)
from ._errors import ConfigError
from ._kinds import (
    BOOLEAN,
    FRACTION,
    HOST,
    INTEGER,
    OPTIONAL_DSN,
    OPTIONAL_PATH,
    OPTIONAL_URL,
    PATH,
    SECONDS,
    Kind,
    choice,
    mask_dsn,
)
from ._toml import toml_key, toml_string

__all__ = [
    "ANYTHING",
    "BOOLEAN",
    "ENV_PREFIX",
    "FRACTION",
    "HOST",
    "INTEGER",
    "NON_EMPTY_NO_SPACE",
    "OPTIONAL_DSN",
    "OPTIONAL_PATH",
    "OPTIONAL_URL",
    "PATH",
    "SECONDS",
    "ConfigError",
    "Constraint",
    "Kind",
    "Setting",
    "above",
    "at_least",
    "between",
    "choice",
    "derived_setting",
    "mask_dsn",
    "section",
    "section_name",
    "setting",
    "settings_of",
    "toml_key",
    "toml_string",
]
