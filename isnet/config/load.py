"""Reading a YAML config, applying ``--set key=value`` overrides, and turning pydantic's errors into
one line per problem that names the key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import ValidationError

from isnet.config.schema import InputMaskConfig, TrainConfig
from isnet.errors import ConfigError


def _describe(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "<top level>"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown key '{key}'"
    got = err.get("input")
    if kind == "missing":
        return f"'{key}' is required"
    return f"'{key}': {err['msg']} (got {got!r})"


def describe_errors(exc: ValidationError, what: str, source: str, overrides: Iterable[str] = ()) -> ConfigError:
    """One ``ConfigError`` for every problem of ``exc``; a problem caused by a ``--set`` override names it
    (``--set optim.epochs=many: 'optim.epochs': ...``), the others are said to be in ``source``."""
    origin: dict[tuple[str, ...], str] = {}
    for text in overrides:
        try:
            origin[tuple(_parse_override(text)[0])] = text
        except ConfigError:
            pass
    lines, from_source = [], False
    for e in exc.errors():
        loc = tuple(str(p) for p in e["loc"])
        hit = [t for k, t in origin.items() if loc and (loc[:len(k)] == k or k[:len(loc)] == loc)]
        if hit:
            lines.append(f"--set {hit[-1]}: {_describe(e)}")
        else:
            from_source = True
            lines.append(_describe(e))
    where = source if from_source else "(from --set)"
    return ConfigError(f"invalid {what} {where}: " + "; ".join(lines))


def validate_config(raw: dict[str, Any], source: str, overrides: Iterable[str] = ()) -> TrainConfig:
    """Validate a plain dict; every problem is reported at once, each naming its key (and the ``--set``
    override it came from, if any)."""
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise describe_errors(exc, "config", source, overrides) from None


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.path=value")
    key, value = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with dotted-key overrides applied (values parsed as YAML scalars/lists)."""
    out = copy.deepcopy(raw)
    for text in overrides:
        parts, value = _parse_override(text)
        node = out
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{text}': '{p}' is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {p} is a directory; give the YAML file inside it (e.g. {p}/train.yaml)")
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not a text file (not UTF-8); a YAML config is expected") from None
    except OSError as exc:
        raise ConfigError(f"config file {p} cannot be read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {p} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must contain a mapping of sections, not {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> TrainConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    raw = read_yaml(path) if path is not None else {}
    overrides = list(overrides)
    raw = apply_overrides(raw, overrides)
    source = str(path) if path is not None else "(defaults)"
    cfg = validate_config(raw, source, overrides)
    _check_derived_input_mask(raw, cfg, source, overrides)
    return cfg


def _check_derived_input_mask(raw: dict[str, Any], cfg: TrainConfig, source: str, overrides: list[str]) -> None:
    """``data.input_mask`` is derived from ``method.masked_input`` (the validated config re-derives it): a config
    file or ``--set`` that writes it is refused unless it says what the methods give (a dumped config fed back)."""
    data = raw.get("data")
    if not isinstance(data, dict) or "input_mask" not in data:
        return
    given = data["input_mask"]
    try:
        agrees = (None if given is None else InputMaskConfig.model_validate(given)) == cfg.data.input_mask
    except ValidationError:
        agrees = False
    if agrees:
        return
    where = next((f"--set {o}" for o in overrides if o.split("=", 1)[0].strip().startswith("data.input_mask")),
                 source)
    derived = "none" if cfg.data.input_mask is None else cfg.data.input_mask.model_dump(mode="json")
    raise ConfigError(f"invalid config {where}: data.input_mask is derived from the methods, not set by hand (these "
                      f"methods give {derived}); list masked_input in methods and set method.masked_input instead")


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}}`` → ``{'a.b': 1}``: the form MLflow params take."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
