"""One settings layer for every entry point: the shared `ALPRO_*` variables; each program adds its own."""

from .logs import demote_library_logs
from .shared import (DEFAULT_CHECKPOINT_URL, ENV_PREFIX, SettingsError, SharedSettings, default_home, env_name,
                     flag_and_variable, load_settings)

__all__ = ["DEFAULT_CHECKPOINT_URL", "ENV_PREFIX", "SettingsError", "SharedSettings", "default_home",
           "demote_library_logs", "env_name", "flag_and_variable", "load_settings"]
