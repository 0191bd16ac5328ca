"""Typed configuration: dataclasses filled from TOML presets, files and overrides.

A run's configuration is a set of named sections (``train``, ``data``,
``model``...), each a dataclass. Values come, in order of precedence, from the
dataclass defaults, a named preset shipped in ``latentlm/presets/`` (the
section ``[<kind>.<section>]``), a user TOML file with the same layout, and
``--set section.key=value`` overrides. An unknown preset, section or key is a
:class:`~latentlm.errors.ConfigError` that lists the valid names.
"""

from __future__ import annotations

import dataclasses
import inspect
import tomllib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from latentlm.choices import current_value
from latentlm.errors import CheckpointError, ConfigError

T = TypeVar("T")


def available_presets() -> list[str]:
    """Names of the presets shipped with the package (``cpu-tiny``, ...)."""
    folder = resources.files("latentlm") / "presets"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> dict[str, Any]:
    """Read a shipped preset as a nested dict."""
    names = available_presets()
    if name not in names:
        raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(names)}")
    text = (resources.files("latentlm") / "presets" / f"{name}.toml").read_text("utf-8")
    return tomllib.loads(text)


def load_toml_file(path: str | Path) -> dict[str, Any]:
    """Read a user TOML config file, with a clear error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def _parse_value(text: str) -> Any:
    """Parse an override value as a TOML literal (``3``, ``1e-3``, ``true``, ``"x"``, ``[1, 2]``);
    anything that is not a literal is taken as a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(overrides: list[str] | None) -> dict[str, dict[str, Any]]:
    """Turn ``["train.lr=1e-3", "model.dim=64"]`` into ``{"train": {"lr": 1e-3}, ...}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise ConfigError(
                f"override {item!r} must look like section.key=value (e.g. train.steps=100)"
            )
        out.setdefault(section, {})[name] = _parse_value(value.strip())
    return out


def split_scoped_overrides(specs: list[str], scope: str = "STAGE") -> dict[str, list[str]]:
    """``["denoiser.train.steps=4000", ...]`` -> ``{"denoiser": ["train.steps=4000"], ...}``: overrides of
    several runs at once, each prefixed by its run (a protocol stage, a model kind: ``scope`` names it
    in the error)."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, rest = spec.partition(".")
        if not sep or not name or "=" not in rest:
            raise ConfigError(f"--set takes {scope}.SECTION.KEY=VALUE (e.g. denoiser.train.steps=4000), got {spec!r}")
        out.setdefault(name, []).append(rest)
    return out


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Coerce/validate ``value`` against a dataclass field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{where} must be one of {list(choices)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        items = [_check_type(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if annotation is Any:
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``values``; unknown keys and bad types are errors.

    The dataclass may define ``validate(self)`` raising ``ConfigError`` for
    cross-field or range checks; it is called after construction.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in [{where or cls.__name__}]; valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {k: current_value(_check_type(v, hints[k], f"{where}.{k}" if where else k)) for k, v in values.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def from_saved(cls: type[T], values: Any, where: str) -> T:
    """Build dataclass ``cls`` from a section an earlier run saved (its ``run_config.json``): keys this
    version no longer has are dropped; anything else wrong is a :class:`~latentlm.errors.CheckpointError`
    naming ``where``, since the file, not the user's configuration, is at fault."""
    if not isinstance(values, dict):
        raise CheckpointError(f"{where} should be a section of keys and values, got {type(values).__name__}; "
                              f"the file is damaged: train the run again or restore it")
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    try:
        return from_dict(cls, {k: v for k, v in values.items() if k in known}, where)
    except ConfigError as err:
        raise CheckpointError(f"{err} (saved in {where}; train the run again or restore the file)") from None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_config(
    kind: str,
    schema: dict[str, type],
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Resolve the configuration of one run.

    Args:
        kind: the table of the preset/config file to read (``"ar"``, ``"autoencoder"``...).
        schema: section name -> dataclass, e.g. ``{"train": TrainConfig, "model": ARConfig}``.
        preset: name of a shipped preset.
        config_file: a TOML file with the same layout as a preset.
        overrides: ``section.key=value`` strings.

    Returns:
        section name -> dataclass instance.
    """
    merged: dict[str, Any] = {}
    for source_name, source in (
        (f"preset {preset!r}", load_preset(preset) if preset else {}),
        (f"config file {config_file}", load_toml_file(config_file) if config_file else {}),
    ):
        if not source:
            continue
        table = source.get(kind, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{kind}] in {source_name} must be a table")
        for section in table:
            if section not in schema:
                raise ConfigError(
                    f"unknown section [{kind}.{section}] in {source_name}; valid: {', '.join(sorted(schema))}"
                )
        merged = _merge(merged, table)
    for section, values in parse_overrides(overrides).items():
        if section not in schema:
            raise ConfigError(
                f"unknown section {section!r} in --set; valid sections: {', '.join(sorted(schema))}"
            )
        merged = _merge(merged, {section: values})
    return {
        name: from_dict(cls, merged.get(name, {}), f"{kind}.{name}") for name, cls in schema.items()
    }


def model_section(
    model_cls: type, name: str, *, exclude: tuple[str, ...] = (),
    extra: tuple[tuple[str, type, Any], ...] = (), check_extra: Any = None,
) -> type:
    """The ``[<kind>.model]`` section of a model class: a dataclass whose fields are the keyword
    arguments of ``model_cls.__init__`` (names, types and defaults: the model's signature is the one
    source of truth), less ``exclude`` (what the run supplies: vocabulary, special tokens), plus
    ``extra`` fields ``(name, type, default)`` that belong to the run rather than the model.

    ``validate()`` runs the model's own checks, ``model_cls.validate_config(values, where)`` (when
    it has one), then ``check_extra(section)``; both raise ConfigError.
    """
    hints = typing.get_type_hints(model_cls.__init__)
    params = [p for p in inspect.signature(model_cls.__init__).parameters.values()
              if p.name != "self" and p.name not in exclude]
    missing = [p.name for p in params if p.default is inspect.Parameter.empty]
    if missing:
        raise TypeError(f"{model_cls.__name__} arguments {missing} have no default: add them to exclude")
    fields = [(p.name, hints[p.name], dataclasses.field(default=p.default)) for p in params]
    fields += [(n, t, dataclasses.field(default=d)) for n, t, d in extra]
    model_keys = {p.name for p in params}

    def validate(self) -> None:
        check = getattr(model_cls, "validate_config", None)
        if check is not None:
            check({k: v for k, v in dataclasses.asdict(self).items() if k in model_keys}, where="model.")
        if check_extra is not None:
            check_extra(self)

    cls = dataclasses.make_dataclass(name, fields, namespace={"validate": validate})
    cls.__module__ = model_cls.__module__
    cls.__doc__ = (f"Model section of a preset: the keyword arguments of :class:`{model_cls.__name__}` "
                   f"(their defaults), less {', '.join(exclude) or 'none'}"
                   + (f", plus {', '.join(n for n, _, _ in extra)}" if extra else "") + ".")
    return cls
