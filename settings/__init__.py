"""One settings layer for every entry point: the shared `ALPRO_*` variables; each program adds its own."""

from .shared import (DEFAULT_CHECKPOINT_URL, ENV_PREFIX, SettingsError, SharedSettings, default_home, env_name,
                     load_settings)

__all__ = ["DEFAULT_CHECKPOINT_URL", "ENV_PREFIX", "SettingsError", "SharedSettings", "default_home", "env_name",
           "load_settings"]
