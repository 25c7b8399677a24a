"""Case configuration: TOML files, ``--set key=value`` overrides, validation before any solve.

A case declares its defaults as a nested dict; a configuration may only contain those keys, with
values of the same type (ints are accepted where floats are expected).  Every error is one line that
names the key, the value and what was expected.
"""

from __future__ import annotations

import copy
import math

import tomllib

__all__ = ["ConfigError", "read_toml", "load_config", "parse_override", "flatten", "config_hash", "differences"]


SOLVER_CHOICES = ("direct", "iterative", "gpu")  # model.solver: a name, or a table of PETSc options


class ConfigError(ValueError):
    """A configuration error, reported before any solve."""


def parse_override(text: str):
    """``"a.b=value"`` -> (["a", "b"], value), the value read as TOML (so 3, 0.5, true, "s", [1, 2])."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set mesh.n=16")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word: take it as a string
    except RecursionError:
        raise ConfigError(f"--set {key}: the value is nested too deeply to be a setting") from None
    return key.split("."), value


def _merge(defaults: dict, given: dict, prefix: str = "") -> dict:
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        name = f"{prefix}{key}"
        if key not in defaults:
            raise ConfigError(f"unknown key {name!r}; expected one of: {', '.join(prefix + k for k in defaults)}")
        ref = defaults[key]
        if isinstance(ref, dict):
            if key == "solver" and isinstance(value, str):  # the named choices of the solver knob
                if value not in SOLVER_CHOICES:
                    raise ConfigError(f"{name}: expected one of {', '.join(map(repr, SOLVER_CHOICES))} or a table of "
                                      f"PETSc options, got {value!r}")
                out[key] = value
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: expected a table of settings, got {value!r}")
            # an empty default table is free-form (PETSc options): taken as it is
            out[key] = dict(value) if not ref else _merge(ref, value, name + ".")
            continue
        out[key] = _check_type(name, ref, value)
    return out


def _check_type(name, ref, value):
    if isinstance(ref, bool):
        ok = isinstance(value, bool)
    elif isinstance(ref, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        if ok and not math.isfinite(value):
            raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    elif isinstance(ref, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and name.endswith("seed") and value < 0:  # NumPy's generators take non-negative seeds
            raise ConfigError(f"{name}: expected a non-negative integer seed, got {value!r}")
    elif isinstance(ref, str):
        ok = isinstance(value, str)
    elif isinstance(ref, list):
        ok = isinstance(value, list)
        numeric = bool(ref) and all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in ref)
        if ok and numeric:
            for v in value:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ConfigError(f"{name}: expected a list of finite numbers (like {ref!r}), got {value!r}")
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{name}: expected {type(ref).__name__} (like {ref!r}), got {value!r}")
    return value


MAX_CONFIG_BYTES = 1024 ** 2  # a configuration is a page of settings; data arrays belong in data.file


def read_toml(path) -> dict:
    """The TOML file at ``path`` as a dict; one ConfigError for a missing, unreadable, oversized (over
    :data:`MAX_CONFIG_BYTES`, refused before it is parsed), malformed or absurdly nested file."""
    import os

    try:
        if os.path.exists(path) and not os.path.isfile(path):  # a FIFO would block, a device never end
            raise ConfigError(f"config file {path}: not a regular file")
        if os.path.getsize(path) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path}: {os.path.getsize(path)} bytes, more than a configuration "
                              f"holds ({MAX_CONFIG_BYTES} at most); observations belong in data.file")
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path}: {e}") from None
    except RecursionError:
        raise ConfigError(f"config file {path}: nested too deeply to be a configuration") from None


def load_config(defaults: dict, path=None, overrides=()) -> dict:
    """Defaults, then the TOML file at ``path`` (if any), then ``overrides`` ("a.b=v" strings)."""
    cfg = copy.deepcopy(defaults)
    if path is not None:
        data = read_toml(path)
        data.pop("case", None)
        cfg = _merge(defaults, data)
    for text in overrides:
        keys, value = parse_override(text)
        nested = value
        for k in reversed(keys):
            nested = {k: nested}
        cfg = _merge(defaults, _deep_update(copy.deepcopy(cfg), nested))
    return cfg


def _deep_update(base: dict, new: dict) -> dict:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = _deep_update(base[k], v)
        else:
            base[k] = v
    return base


def flatten(cfg: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; free-form tables (PETSc options) stay one value."""
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict) and value and not key == "solver":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_hash(cfg: dict) -> str:
    """SHA-256 of the configuration (canonical JSON): what a checkpoint was computed with."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()


def differences(old: dict, new: dict) -> dict:
    """``{key: (old value, new value)}`` for every flattened key whose value differs."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
