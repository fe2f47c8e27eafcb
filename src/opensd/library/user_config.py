"""The user's settings file and where the models folder is, set once for every command.

The models folder (an A1111 or ComfyUI `models/` folder) is, in order: the command's
`--models-dir`, the environment variable OPENSD_MODELS_DIR, or `models_dir` in the config file:

    # ~/.config/opensd/config.toml   (Windows: %APPDATA%\\opensd\\config.toml,
    #                                 macOS: ~/Library/Application Support/opensd/config.toml)
    models_dir = "~/stable-diffusion-webui/models"

OPENSD_CONFIG names another config file. `~` is expanded; a relative path is relative to the
config file's folder. A config file that cannot be read is the user's mistake, told in one line.
"""
from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

from ..errors import InvalidArgument

MODELS_DIR_ENV = "OPENSD_MODELS_DIR"
CONFIG_ENV = "OPENSD_CONFIG"
KEYS = {"models_dir": "an A1111 or ComfyUI models/ folder"}


def config_path() -> Path:
    """$OPENSD_CONFIG, else config.toml in the platform's user config folder + opensd."""
    if env := os.environ.get(CONFIG_ENV):
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        xdg = os.environ.get("XDG_CONFIG_HOME")
        base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return base / "opensd" / "config.toml"


def read_config(path: Path | None = None) -> dict:
    """The config file's settings ({} when there is no file); unknown keys and wrong types are refused."""
    path = config_path() if path is None else path
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InvalidArgument(f"config: cannot read {path} ({e})") from None
    for key, value in data.items():
        if key not in KEYS:
            raise InvalidArgument(f"config: unknown setting {key!r} in {path} (known: {', '.join(KEYS)})")
        if not isinstance(value, str) or not value.strip():
            raise InvalidArgument(f"config: {key} in {path} must be a non-empty string ({KEYS[key]})")
    return data


def models_dir(flag: Path | None = None) -> Path | None:
    """The models folder: `flag`, else $OPENSD_MODELS_DIR, else the config file's models_dir, else None.
    Only a folder that does not exist is refused (naming where the setting came from)."""
    if flag is not None:
        where, path = "models-dir", Path(flag).expanduser()
    elif env := os.environ.get(MODELS_DIR_ENV, "").strip():
        where, path = f"models-dir: ${MODELS_DIR_ENV}", Path(env).expanduser()
    else:
        cfg_file = config_path()
        value = read_config(cfg_file).get("models_dir")
        if value is None:
            return None
        where, path = f"models-dir: models_dir in {cfg_file}", Path(value).expanduser()
        if not path.is_absolute():
            path = cfg_file.parent / path
    if not path.is_dir():
        raise InvalidArgument(f"{where}: {path} is not a folder")
    return path
