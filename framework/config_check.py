"""Check the command line against the config before Hydra runs, and explain config errors.

Hydra composes the config before tunesmith's code runs, and its errors are long and name
no alternative. :func:`check_command_line` composes the config once with the group choices
of the command line, then checks every ``key=value`` override against it: an unknown key
(with the nearest existing key), an unknown group option (with the options), a value of
the wrong type (against the default's type, or ``lightning.Trainer``'s annotation for
``trainer.*``), and a required ``???`` value left unset. :func:`explain` turns any
Hydra/OmegaConf error that still happens into a :class:`~framework.errors.ConfigError`.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from framework.errors import ConfigError, did_you_mean

_ABSENT = object()
_SHOW_KEYS = "python run.py --cfg job prints every key"


# --------------------------------------------------------------------------- helpers


def _node(cfg: Any, key: str) -> Any:
    """The raw node at dotted ``key`` (no interpolation resolved), or ``_ABSENT``."""
    node = cfg
    for part in key.split("."):
        if isinstance(node, DictConfig):
            try:
                child = node._get_node(part, throw_on_missing_key=False)
            except OmegaConfBaseException:  # struct mode raises for unknown keys
                child = None
        elif isinstance(node, ListConfig) and part.lstrip("-").isdigit():
            try:
                child = node._get_node(int(part))
            except (IndexError, KeyError, ValueError, OmegaConfBaseException):
                child = None
        else:
            return _ABSENT
        if child is None:
            return _ABSENT
        node = child
    return node


def _raw(node: Any) -> Any:
    """The raw default of a node: a Python value, ``'???'``, or ``_ABSENT`` for interpolations."""
    if isinstance(node, DictConfig | ListConfig):
        if node._is_missing():
            return "???"
        return node
    if node._is_interpolation():
        return _ABSENT
    return node._value()


def leaf_keys(cfg: Any, prefix: str = "") -> Iterator[str]:
    """Every dotted key of ``cfg`` (containers and leaves), without resolving anything."""
    if isinstance(cfg, DictConfig):
        if cfg._is_missing() or cfg._is_none():
            return
        for key in cfg:
            full = f"{prefix}{key}"
            yield full
            child = cfg._get_node(key)
            if isinstance(child, DictConfig):
                yield from leaf_keys(child, full + ".")


def missing_values(cfg: Any, prefix: str = "") -> Iterator[str]:
    """Dotted keys whose value is ``???`` (must be given), without resolving anything."""
    if not isinstance(cfg, DictConfig) or cfg._is_none():
        return
    for key in cfg:
        child = cfg._get_node(key)
        full = f"{prefix}{key}"
        if child._is_missing():
            yield full
        elif isinstance(child, DictConfig):
            yield from missing_values(child, full + ".")


#: Names other tools use for keys tunesmith spells differently.
SYNONYMS = {
    "learning_rate": "lr",
    "learningrate": "lr",
    "epochs": "max_epochs",
    "num_epochs": "max_epochs",
    "num_train_epochs": "max_epochs",
    "steps": "max_steps",
    "num_steps": "max_steps",
    "max_train_steps": "max_steps",
    "bs": "batch_size",
    "per_device_train_batch_size": "batch_size",
    "rank": "r",
    "lora_r": "r",
    "alpha": "lora_alpha",
    "grad_clip": "gradient_clip_val",
    "max_grad_norm": "gradient_clip_val",
    "gradient_accumulation_steps": "accumulate_grad_batches",
    "max_seq_length": "max_length",
    "seq_len": "max_length",
}


def nearest_key(cfg: Any, key: str) -> str:
    """' Did you mean X?' for an unknown dotted ``key``: a sibling first, then any key."""
    parts = key.split(".")
    parent_key = ".".join(parts[:-1])
    parent = _node(cfg, parent_key) if parent_key else cfg
    every = list(leaf_keys(cfg))
    synonym = SYNONYMS.get(parts[-1].lower())
    if synonym:
        candidates = [".".join([*parts[:-1], synonym])] + [
            k for k in every if k.endswith("." + synonym)
        ]
        for candidate in candidates:
            if candidate in every:
                return f" Did you mean '{candidate}'?"
    if isinstance(parent, DictConfig):
        close = difflib.get_close_matches(parts[-1], [str(k) for k in parent], 1, 0.7)
        if close:
            return f" Did you mean '{'.'.join([*parts[:-1], close[0]])}'?"
    close = difflib.get_close_matches(key, every, n=1, cutoff=0.7)
    if not close:  # a key given without its group, e.g. max_steps for trainer.max_steps
        close = [k for k in every if k.endswith("." + parts[-1])][:1]
    return f" Did you mean '{close[0]}'?" if close else ""


# --------------------------------------------------------------------------- types


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list | ListConfig):
        return "a list [a,b]"
    if isinstance(value, dict | DictConfig):
        return "a mapping {k: v}"
    return type(value).__name__


def _show(value: Any) -> str:
    """``value`` as it would be written on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, DictConfig):
        return "{...}"
    return str(value)


def type_problem(default: Any, value: Any) -> str | None:
    """Why ``value`` cannot replace ``default`` (``None`` when it can).

    Only clear mismatches count: a number or true/false where the default is one, a
    mapping where the default is a mapping. ``null`` and unset (``???``) defaults take
    anything, and so do text and list defaults.
    """
    if default is _ABSENT or default is None or default == "???" or value is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else "must be a whole number"
    if isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "must be a number"
    if isinstance(default, DictConfig):
        return None if isinstance(value, dict) else "must be a mapping, e.g. {key: value}"
    return None


def _matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` fits a typing annotation (unknown annotations accept anything)."""
    if annotation is Any or annotation is None:
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple) or annotation in (list, tuple):
        return isinstance(value, list)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    return True


def trainer_accepts(name: str, value: Any) -> bool | None:
    """Whether ``lightning.Trainer(name=value)`` fits the argument's annotation (``None``: unknown)."""
    try:
        from lightning.pytorch import Trainer

        hints = typing.get_type_hints(Trainer.__init__)
    except Exception:  # noqa: BLE001 - a missing annotation must not block a run
        return None
    if name not in hints:
        return None
    return _matches(value, hints[name])


# --------------------------------------------------------------------------- the check


def _values(override: Any) -> list[Any]:
    """The value(s) an override sets: one, or every element of a choice/range sweep."""
    from hydra.core.override_parser.types import Override

    if not override.is_sweep_override():
        return [override.value()]
    if override.is_discrete_sweep() and override.value_type.name != "GLOB_CHOICE_SWEEP":
        return [Override._convert_value(v) for v in override.sweep_iterator()]
    return []  # interval and glob sweeps: the sweeper checks them


def check_command_line(argv: list[str], config_dir: str, config_name: str = "config") -> None:
    """Raise :class:`ConfigError` for the first problem in the overrides of ``argv``.

    Args:
        argv: the command-line arguments (``sys.argv[1:]``).
        config_dir: tunesmith's ``conf/`` directory.
        config_name: the primary config.

    Raises:
        ConfigError: an override that cannot be parsed, names an unknown key or group
            option, or has the wrong type; or a required ``???`` value left unset.
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        args, _ = get_args_parser().parse_known_args(argv)
    except SystemExit:
        return  # let Hydra print its usage message
    if (
        args.help
        or args.hydra_help
        or args.info
        or args.shell_completion
        or args.config_path
        or args.config_name
        or args.config_dir
        or getattr(args, "experimental_rerun", None)
    ):
        return

    parser = OverridesParser.create()
    overrides = []
    for line in args.overrides:
        try:
            overrides.append(parser.parse_override(line))
        except HydraException as exc:
            detail = str(exc).strip().splitlines()
            raise ConfigError(
                f"Cannot read the override '{line}': {detail[-2] if len(detail) > 1 else detail[0]}",
                where=line,
                hint="write key=value (lists: key=[a,b]; text with spaces or commas in "
                "quotes: key='a, b'); in a shell, quote the whole argument.",
            ) from None

    if any(o.key_or_group == "hydra.searchpath" for o in overrides):
        # Extra config directories on the command line: only Hydra's own composition knows
        # their options, and its errors are explained after it fails (see ``explain``).
        return
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            loader = GlobalHydra.instance().config_loader()
            groups, values = [], []
            for o in overrides:
                if o.is_hydra_override() or o.is_delete():
                    continue
                (groups if loader.repository.group_exists(o.key_or_group) else values).append(o)
            compose_lines = []
            for o in groups:
                options = loader.get_group_options(o.key_or_group)
                chosen = [v for v in _values(o) if isinstance(v, str)]
                for option in chosen:
                    if option not in options:
                        raise ConfigError(
                            f"Could not find '{o.key_or_group}/{option}': no option "
                            f"'{option}' in the config group '{o.key_or_group}'."
                            f"{did_you_mean(option, options)} Options: {', '.join(options)}.",
                            where=f"{o.key_or_group}={option} (conf/{o.key_or_group}/)",
                            hint=f"pick one of the options, or add conf/{o.key_or_group}/"
                            f"{option}.yaml (python run.py --help lists every group).",
                        )
                if o.is_sweep_override():
                    if chosen:
                        compose_lines.append(f"{o.get_key_element()}={chosen[0]}")
                else:
                    compose_lines.append(o.input_line)
            try:
                base = compose(config_name=config_name, overrides=compose_lines)
            except (HydraException, OmegaConfBaseException) as exc:
                raise explain(exc) from exc
            swept = {o.key_or_group for o in groups if o.is_sweep_override()}
            for o in values:
                _check_value(base, o, swept)
            given = {o.key_or_group for o in values}
            for key in missing_values(base):
                if key not in given and not any(key.startswith(g + ".") for g in given):
                    raise ConfigError(
                        f"The config value {key} must be given: it has no default (??? in "
                        "the config).",
                        where=key,
                        hint=f"add {key}=<value> to the command.",
                    )
    finally:
        GlobalHydra.instance().clear()


def _check_value(base: DictConfig, override: Any, swept_groups: set[str]) -> None:
    key = override.key_or_group
    node = _node(base, key)
    if node is _ABSENT:
        if override.is_add() or override.is_force_add():
            return
        if key.split(".")[0] in swept_groups:
            return  # the key may exist in another option of a swept group
        raise ConfigError(
            f"Unknown config key '{key}'.{nearest_key(base, key)}",
            where=override.input_line,
            hint=f"check the spelling ({_SHOW_KEYS}); to add a new key on purpose, "
            f"write +{key}=...",
        )
    default = _raw(node)
    for value in _values(override):
        problem = type_problem(default, value)
        if problem and key.startswith("trainer.") and key.count(".") == 1:
            accepted = trainer_accepts(key.split(".", 1)[1], value)
            if accepted:
                problem = None
        if problem:
            shown = _show(default)
            raise ConfigError(
                f"Wrong type for {key}: got {value!r} ({_type_name(value)}); it {problem} "
                f"(default: {shown}).",
                where=override.input_line,
                hint=f"e.g. {key}={shown}" if not isinstance(default, DictConfig) else None,
            )


# --------------------------------------------------------------------------- explain


def explain(exc: BaseException) -> ConfigError:
    """A short :class:`ConfigError` for a Hydra or OmegaConf error."""
    from hydra.errors import MissingConfigException, OverrideParseException

    cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else None
    oc = exc if isinstance(exc, OmegaConfBaseException) else cause
    text = [line for line in str(exc).strip().splitlines() if line.strip()]
    first = text[0] if text else type(exc).__name__
    if isinstance(exc, MissingConfigException):
        options = list(exc.options or [])
        name = str(exc.missing_cfg_file or "")
        return ConfigError(
            f"{first}{did_you_mean(name.rsplit('/', 1)[-1], options) if options else ''}"
            + (f" Options: {', '.join(options)}." if options else ""),
            where=name or None,
            hint="python run.py --help lists every group and option.",
        )
    if isinstance(exc, OverrideParseException):
        return ConfigError(
            f"Cannot read an override: {first}",
            hint="write key=value; quote values with spaces or commas.",
        )
    full_key = getattr(oc, "full_key", None) if oc is not None else None
    msg = getattr(oc, "msg", None) or first
    if isinstance(oc, MissingMandatoryValue):
        return ConfigError(
            f"The config value {full_key} must be given: it has no default (???).",
            where=full_key,
            hint=f"add {full_key}=<value> to the command.",
        )
    if isinstance(oc, ValidationError):
        return ConfigError(f"Wrong type for {full_key}: {msg}", where=full_key)
    if isinstance(oc, InterpolationResolutionError):
        return ConfigError(f"Cannot resolve the value of {full_key}: {msg}", where=full_key)
    if isinstance(oc, ConfigKeyError | ConfigAttributeError):
        return ConfigError(
            f"Unknown config key '{full_key}'.",
            where=full_key,
            hint=f"check the spelling ({_SHOW_KEYS}); to add a key on purpose, "
            f"write +{full_key}=...",
        )
    if oc is not None and full_key:
        return ConfigError(f"{msg}", where=full_key)
    return ConfigError(first, hint=" ".join(text[1:3]) or None)
