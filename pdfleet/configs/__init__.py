"""The files pdfleet ships as its defaults, one copy each, read from the installed package so
that a wheel works from any directory: the local fleet of `pdfleet up` and `pdfleet router`
(local.yaml) and the failure scenarios of `pdfleet chaos` (chaos.yaml)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _shipped(name: str) -> Path:
    resource = files(__name__).joinpath(name)
    # A path, not just a readable resource: `pdfleet up` hands the config to its router
    # process by path. Installed packages (wheel or editable) are plain directories.
    if not isinstance(resource, Path):
        raise FileNotFoundError(f"{name}: pdfleet must be installed as files, not zipped")
    return resource


LOCAL_FLEET = _shipped("local.yaml")
CHAOS_SCENARIOS = _shipped("chaos.yaml")
