"""Checking raw records against a record shape: fields, column mapping, roles and turn order.

The record-shape plugins (``plugins/formats/``) turn raw records into tunesmith examples with
these helpers, so every shape reports a bad record the same way: a
:class:`~framework.errors.RecordError` whose ``reason`` is one of :data:`REASONS`.

Examples come in three shapes:

* chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``;
* plain text for continued pre-training: ``{"text": str}``;
* a preference pair: the chat shape whose last assistant turn is the *chosen* answer, plus
  ``"rejected": str``, the rejected answer to the same prompt (see :func:`preference_of`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from framework.errors import RecordError

#: Every reason a record can be rejected for, with what it means (docs/data.md lists them).
REASONS: dict[str, str] = {
    "not_utf8": "the line (or CSV row) is not valid UTF-8",
    "not_json": "a JSON-lines line is not JSON",
    "bad_row": "a CSV/TSV row has more or fewer fields than the header",
    "not_object": "the record is not an object (a JSON object, a CSV row...)",
    "missing_field": "a required field is absent",
    "wrong_type": "a field has the wrong type (e.g. a number where text is expected)",
    "empty_field": "a required field is empty or only whitespace",
    "bad_role": "a conversation turn has a role that is not system/user/assistant or mapped",
    "bad_turn_order": "turns do not alternate user/assistant, or the system turn is not first",
    "same_answers": "a preference pair's chosen and rejected answers are the same",
    "bad_text": "text holds characters that cannot be encoded (lone surrogates, U+FFFD, NUL)",
    "unparsed": "the record-shape plugin returned nothing for the record",
}

#: Role names understood without configuration, mapped to tunesmith's three roles.
ROLE_ALIASES: dict[str, str] = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
}


#: id(config mapping) -> (the mapping, a plain dict of it): see :func:`plain_mapping`.
_PLAIN: dict[int, tuple[Any, dict[str, Any]]] = {}


def plain_mapping(mapping: Mapping[str, Any] | None) -> dict[str, Any]:
    """``data.columns`` / ``data.roles`` as a plain dict, converted once per config node.

    The format plugins read these mappings several times per record; reading an OmegaConf
    node costs tens of microseconds, a dict lookup almost nothing.
    """
    if not mapping:
        return {}
    if isinstance(mapping, dict):
        return mapping
    hit = _PLAIN.get(id(mapping))
    if hit is None or hit[0] is not mapping:
        if len(_PLAIN) > 32:
            _PLAIN.clear()
        plain = {str(k): mapping[k] for k in mapping}
        hit = _PLAIN[id(mapping)] = (mapping, plain)
    return hit[1]


def column(columns: Mapping[str, Any] | None, key: str) -> str:
    """The name of the record field that holds tunesmith's ``key`` (``data.columns`` mapping)."""
    value = plain_mapping(columns).get(key)
    return key if value is None else str(value)


def require_object(record: Any) -> Mapping[str, Any]:
    """Return ``record`` if it is a mapping, else reject it as ``not_object``."""
    if not isinstance(record, Mapping):
        raise RecordError(
            "not_object", f"record must be an object with fields, got {type(record).__name__}"
        )
    return record


def text_field(
    record: Mapping[str, Any], columns: Mapping[str, Any] | None, key: str, required: bool
) -> str:
    """The text of field ``key`` (through the column mapping).

    Args:
        record: the raw record.
        columns: ``data.columns``.
        key: tunesmith's field name (``instruction``, ``output``, ``text``...).
        required: reject the record when the field is absent or empty.

    Returns:
        The text; ``""`` for an absent optional field.

    Raises:
        RecordError: ``missing_field``, ``wrong_type`` or ``empty_field``.
    """
    name = column(columns, key)
    value = record.get(name)
    if value is None:
        if required:
            raise RecordError("missing_field", f"field '{name}' is missing", field=name)
        return ""
    if not isinstance(value, str):
        raise RecordError(
            "wrong_type", f"field '{name}' must be text, got {type(value).__name__}", field=name
        )
    if required and not value.strip():
        raise RecordError("empty_field", f"field '{name}' is empty", field=name)
    return value


def list_field(value: Any, name: str) -> list:
    """``value`` as a list; a string holding a JSON array (a CSV cell) is decoded first."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RecordError(
                "wrong_type", f"field '{name}' must be a list, got text that is not JSON", name
            ) from None
    if not isinstance(value, list):
        raise RecordError(
            "wrong_type", f"field '{name}' must be a list, got {type(value).__name__}", field=name
        )
    return value


def map_role(raw: Any, where: str, roles: Mapping[str, Any] | None = None) -> str:
    """Map a role name (``human``, ``gpt``...) to ``system``/``user``/``assistant``.

    Args:
        raw: the role as written in the record.
        where: the field it came from, for the message.
        roles: extra mappings from ``data.roles`` (``{"bot": "assistant"}``); they win.

    Raises:
        RecordError: ``bad_role`` for a role that is neither built in nor mapped.
    """
    table = {**ROLE_ALIASES, **{k: str(v) for k, v in plain_mapping(roles).items()}}
    role = table.get(str(raw)) if isinstance(raw, str) else None
    if role not in ("system", "user", "assistant"):
        known = ", ".join(sorted(table))
        raise RecordError(
            "bad_role",
            f"{where} has role {raw!r}; known roles are {known} (map others with data.roles)",
            field=where,
        )
    return role


def parse_turns(
    turns: list,
    name: str,
    columns: Mapping[str, Any] | None,
    roles: Mapping[str, Any] | None,
) -> list[dict[str, str]]:
    """Turn a list of turn objects into ``[{"role", "content"}]`` (roles mapped, not ordered).

    Each turn uses ``role``/``content`` or the ShareGPT spelling ``from``/``value``; the
    column mapping may rename them (``data.columns.role``, ``data.columns.content``).
    """
    role_key, content_key = column(columns, "role"), column(columns, "content")
    messages = []
    for i, turn in enumerate(turns):
        where = f"{name}[{i}]"
        if not isinstance(turn, Mapping):
            raise RecordError(
                "wrong_type", f"{where} must be an object, got {type(turn).__name__}", field=name
            )
        rk = role_key if role_key in turn else "from" if "from" in turn else role_key
        ck = content_key if content_key in turn else "value" if "value" in turn else content_key
        if rk not in turn:
            raise RecordError("missing_field", f"{where} has no '{rk}' (its role)", field=name)
        if ck not in turn or turn[ck] is None:
            raise RecordError("missing_field", f"{where} has no '{ck}' (its text)", field=name)
        content = turn[ck]
        if not isinstance(content, str):
            raise RecordError(
                "wrong_type",
                f"{where}.{ck} must be text, got {type(content).__name__}",
                field=name,
            )
        role = map_role(turn[rk], f"{where}.{rk}", roles)
        if not content.strip():
            raise RecordError("empty_field", f"{where}.{ck} ({role}) is empty", field=name)
        messages.append({"role": role, "content": content})
    return messages


def check_turn_order(messages: list[dict[str, str]], name: str, end: str = "assistant") -> None:
    """Check an optional leading system turn, then user/assistant alternating from user.

    Args:
        messages: the mapped turns.
        name: the field they came from, for the message.
        end: the role the last turn must have (``assistant`` for training data, ``user``
            for the prompt of a preference pair).

    Raises:
        RecordError: ``empty_field`` for no turns, ``bad_turn_order`` otherwise.
    """
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body:
        raise RecordError("empty_field", f"'{name}' has no user or assistant turn", field=name)
    offset = len(messages) - len(body)
    for i, m in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            detail = (
                "a system turn may only come first"
                if m["role"] == "system"
                else f"expected {_a(expected)} turn"
            )
            raise RecordError(
                "bad_turn_order",
                f"{name}[{i + offset}] is {_a(m['role'])} turn: {detail} "
                "(turns go system?, user, assistant, user, assistant...)",
                field=name,
            )
    if body[-1]["role"] != end:
        raise RecordError(
            "bad_turn_order",
            f"the last turn of '{name}' is {_a(body[-1]['role'])} turn; it must be the {end}'s",
            field=name,
        )


def _a(role: str) -> str:
    return f"{'an' if role == 'assistant' else 'a'} {role}"


def check_text(example: Any, path: str = "") -> None:
    """Reject an example holding text that cannot be written or tokenized faithfully.

    Lone surrogates (from a bad ``\\ud800`` escape or undecodable bytes), U+FFFD replacement
    characters (text decoded with errors somewhere upstream) and NUL characters.

    Raises:
        RecordError: ``bad_text``, naming the field.
    """
    if isinstance(example, str):
        problem = None
        try:
            example.encode("utf-8")
        except UnicodeEncodeError as exc:
            problem = f"undecodable character {example[exc.start]!r} at position {exc.start}"
        if problem is None and "\ufffd" in example:
            problem = f"a U+FFFD replacement character at position {example.index(chr(0xFFFD))}"
        if problem is None and "\x00" in example:
            problem = f"a NUL character at position {example.index(chr(0))}"
        if problem:
            raise RecordError("bad_text", f"{path or 'text'} holds {problem}", field=path or None)
    elif isinstance(example, list):
        for i, v in enumerate(example):
            check_text(v, f"{path}[{i}]")
    elif isinstance(example, Mapping):
        for k, v in example.items():
            if not str(k).startswith("_"):
                check_text(v, f"{path}.{k}" if path else str(k))


def preference_of(example: Mapping[str, Any]) -> tuple[list[dict], str, str]:
    """Split a preference example into ``(prompt messages, chosen, rejected)``.

    For plugins implementing preference methods (DPO, ORPO...). Raises ``KeyError`` for an
    example that is not a preference pair.
    """
    messages = example["messages"]
    return list(messages[:-1]), messages[-1]["content"], example["rejected"]
