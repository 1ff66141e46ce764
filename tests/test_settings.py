"""Declaring settings (guardrefresh.settings): names derived, defaults checked, one error."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from guardrefresh.settings import (
    BOOLEAN,
    INTEGER,
    SECONDS,
    ConfigError,
    above,
    between,
    derived_setting,
    section,
    setting,
    settings_of,
)


def _double_limit(self: Any) -> float:
    limit = self.limit
    return 2.0 * limit if isinstance(limit, int | float) else 1.0


@section("widget", flag_prefix="wid")
@attrs.frozen(kw_only=True)
class WidgetConfig:
    enabled: bool = setting(BOOLEAN, True, help="Run the widget.")
    max_parts: int = setting(INTEGER, 8, constraint=between(1, 64), help="Most parts.")
    limit: float = setting(SECONDS, 1.5, constraint=above(0), help="Seconds.")
    window: float = derived_setting(
        SECONDS, _double_limit, shown="2 x limit", constraint=above(0), help="A window."
    )
    tuning: int = attrs.field(default=3)  # not a setting


def test_rows_follow_the_fields_and_derive_their_names() -> None:
    rows = {row.key: row for row in settings_of(WidgetConfig)}
    assert list(rows) == ["enabled", "max_parts", "limit", "window"]  # tuning is not one
    assert (rows["max_parts"].flag, rows["max_parts"].env) == (
        "--wid-max-parts",
        "GUARDREFRESH_WID_MAX_PARTS",
    )
    assert rows["max_parts"].toml_name == "[widget] max_parts"
    assert rows["max_parts"].name == "widget.max_parts"
    # The switch of a whole section is named after the section.
    assert (rows["enabled"].flag, rows["enabled"].negative_flag) == ("--widget", "--no-widget")
    assert rows["enabled"].env == "GUARDREFRESH_WIDGET_ENABLED"
    assert rows["max_parts"].allowed == "an integer from 1 to 64"
    assert (rows["limit"].default, rows["limit"].default_text, rows["limit"].derived) == (
        1.5,
        "1.5",
        None,
    )
    # A derived default: its value with the other defaults, and how it is computed.
    assert (rows["window"].default, rows["window"].default_text) == (3.0, "2 x limit")
    assert rows["window"].default_toml == "2 x limit"


def test_derived_defaults_follow_the_values_given() -> None:
    assert WidgetConfig(limit=4.0).window == 8.0
    assert WidgetConfig(limit=4.0, window=1.0).window == 1.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_parts": 0}, "widget.max_parts: invalid value 0; allowed: an integer from 1 to 64"),
        ({"max_parts": True}, "widget.max_parts: invalid value True; allowed: an integer"),
        ({"enabled": "yes"}, "widget.enabled: invalid value 'yes'; allowed: a boolean"),
        (
            {"limit": "1\n2"},
            "widget.limit: invalid value '1\\n2'; allowed: a number of seconds > 0",
        ),
        # A bad value a derived default depends on is reported for itself.
        ({"limit": -1.0}, "widget.limit: invalid value -1.0; allowed: a number of seconds > 0"),
    ],
)
def test_a_bad_value_raises_one_config_error_on_one_line(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        WidgetConfig(**changes)
    assert type(info.value) is ConfigError
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)
    assert info.value.settings == ()


def test_a_default_that_is_not_allowed_fails_where_it_is_declared() -> None:
    with pytest.raises(TypeError, match=r"default 0 is not allowed: an integer from 1 to 64"):
        setting(INTEGER, 0, constraint=between(1, 64), help="Broken.")


def test_section_needs_an_attrs_class_and_rows_need_a_section() -> None:
    class Plain:
        pass

    with pytest.raises(TypeError, match="needs an attrs class"):
        section("plain")(Plain)

    @attrs.frozen
    class Unmarked:
        size: int = setting(INTEGER, 1, help="A size.")

    with pytest.raises(TypeError, match="not a settings section"):
        settings_of(Unmarked)


def test_config_error_keeps_the_settings_involved_and_one_line() -> None:
    error = ConfigError("a must be <= b\nreally", settings=("s.a", "s.b"))
    assert str(error) == "a must be <= b\\nreally"
    assert error.message == str(error)
    assert error.settings == ("s.a", "s.b")
    assert isinstance(error, ValueError)
