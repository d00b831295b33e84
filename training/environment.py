"""What `alpro-train` reads from the environment: the shared `ALPRO_*` layer (settings.SharedSettings).

The run itself is described by the YAML config; the environment says where it runs: ALPRO_DEVICE (auto,
cpu, cuda, cuda:N) and, for `model.init` / `model.prompter` given as a released checkpoint's name
(`alpro-fetch --list`), ALPRO_HOME and ALPRO_CHECKPOINT_URL. An empty variable means unset.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from settings import SharedSettings, load_settings

from .config import TrainConfig


class TrainEnvironment(SharedSettings):
    """The shared settings as alpro-train uses them (device, home, checkpoint_url)."""


def read_environment() -> TrainEnvironment:
    """The environment's settings; SettingsError names a bad variable."""
    return load_settings(TrainEnvironment)


def resolve_named_checkpoints(config: TrainConfig, env: TrainEnvironment) -> TrainConfig:
    """`model.init` / `model.prompter` that name a released checkpoint become its fetched native directory."""
    from model.hub import is_checkpoint_name, resolve_checkpoint

    changes = {}
    for name in ("init", "prompter"):
        value = getattr(config.model, name)
        if value and not Path(value).exists() and is_checkpoint_name(value):
            changes[name] = str(resolve_checkpoint(value, home=env.home, base_url=env.checkpoint_url))
    if not changes:
        return config
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **changes))
