"""The one place that reads `SWITCHBOARD_*` from the environment.

Every package has plain settings models that never look at the environment; this class is
all of them at once, filled from the environment (then the root CLI's flags on top). Only
entry points build it, through `from_environment`: tests, benchmarks and scratch registries
use the plain models, so a machine configured for a shared production registry never
receives their data.
"""

from __future__ import annotations

import re

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.serving.settings import ServerSettings

PREFIX = "SWITCHBOARD_"


class Settings(ServerSettings, BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore")


def from_environment() -> Settings:
    """The settings the environment gives; a bad one is an error of one line naming each
    variable, its value and what is wrong (pydantic's report is a screenful)."""
    try:
        return Settings()
    except ValidationError as exc:
        bad = [
            f"{_variable(str(error['loc'][0]), error['input'])}: {error['msg']}"
            for error in exc.errors(include_url=False)
        ]
    except SettingsError as exc:  # a JSON-valued setting that is not JSON
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"{PREFIX}{field[1].upper()}" if field else "a JSON setting"
        bad = [f"{name} is not valid JSON ({exc.__cause__})"]
    raise SwitchboardError(ErrorCode.INVALID_INPUT, "bad setting: " + "; ".join(bad))


def _variable(field: str, value: object) -> str:
    """The variable and its value (cut short; never a key's)."""
    if "key" in field:
        return f"{PREFIX}{field.upper()}"
    text = repr(value)
    return f"{PREFIX}{field.upper()}={text if len(text) <= 80 else text[:77] + '…'}"
