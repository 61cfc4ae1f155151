"""The one place that reads `SWITCHBOARD_*` from the environment.

Every package has plain settings models that never look at the environment; this class is
all of them at once, filled from the environment (then the root CLI's flags on top). Only
entry points build it: tests, benchmarks and scratch registries use the plain models, so a
machine configured for a shared production registry never receives their data.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

from switchboard_lora.serving.settings import ServerSettings


class Settings(ServerSettings, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_", extra="ignore")
