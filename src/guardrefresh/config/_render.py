"""Writing a configuration back as TOML (``--print-config``)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping

from .. import __version__
from ..settings import toml_key
from ._service import DEFAULT_ORIGIN, SECTIONS, SETTINGS, ServiceConfig, setting_values

__all__ = ["render_config"]


def render_config(config: ServiceConfig, *, origins: Mapping[str, str] | None = None) -> str:
    """*config* as a TOML document that ``--config`` reads back to an equal config.

    Every setting is written, each under a comment with its help text and default.
    With *origins* (``{"section.key": origin}``, see
    :attr:`~guardrefresh.config.ResolvedConfig.origins`), a value that did not come
    from the defaults is annotated with where it came from.
    """
    values = setting_values(config)
    lines = [f"# Effective configuration of guardrefresh {__version__}."]
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        for setting in SETTINGS:
            if setting.section != section:
                continue
            lines += textwrap.wrap(
                f"{setting.help} Default: {setting.default_toml}.",
                width=88,
                initial_indent="# ",
                subsequent_indent="# ",
            )
            line = f"{toml_key(setting.key)} = {setting.kind.to_toml(values[setting.name])}"
            origin = None if origins is None else origins.get(setting.name)
            if origin is not None and origin != DEFAULT_ORIGIN:
                # The origin may quote user input; keep it on this comment line.
                line += "  # from " + origin.encode("unicode_escape").decode("ascii")
            lines.append(line)
    return "\n".join(lines) + "\n"
