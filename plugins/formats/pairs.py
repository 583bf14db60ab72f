"""Preference pairs: ``prompt``, ``chosen``, ``rejected`` (+ optional ``system``).

``prompt`` is text or a list of turns ending with a user turn; ``chosen`` and ``rejected`` are
text, or an assistant turn (``{"role": "assistant", "content": ...}``, alone or in a list).
The example is the conversation ending with the chosen answer (so SFT learns the chosen
answers) plus ``rejected``; ``framework.data.records.preference_of`` splits it again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from framework import DataFormat, hookimpl
from framework.data.records import (
    check_turn_order,
    column,
    parse_turns,
    require_object,
    text_field,
)
from framework.errors import RecordError


@hookimpl
def tunesmith_provides() -> list[DataFormat]:
    return [
        DataFormat(
            "pairs", produces="pair", description="preference pairs: prompt, chosen, rejected"
        )
    ]


def _answer(record: Mapping, columns: Any, key: str, roles: Any) -> str:
    name = column(columns, key)
    value = record.get(name)
    if isinstance(value, Mapping):
        value = [value]
    if isinstance(value, list):
        turns = parse_turns(value, name, columns, roles)
        if len(turns) != 1 or turns[0]["role"] != "assistant":
            raise RecordError("bad_turn_order", f"'{name}' must be one assistant turn", field=name)
        return turns[0]["content"]
    return text_field(record, columns, key, required=True)


@hookimpl
def tunesmith_parse_record(name: str, record: Any, data_cfg: DictConfig) -> dict | None:
    if name != "pairs":
        return None
    record = require_object(record)
    columns, roles = data_cfg.get("columns"), data_cfg.get("roles")
    field = column(columns, "prompt")
    if isinstance(record.get(field), list):
        prompt = parse_turns(record[field], field, columns, roles)
    else:
        prompt = [{"role": "user", "content": text_field(record, columns, "prompt", True)}]
    system = text_field(record, columns, "system", required=False)
    if system.strip() and not (prompt and prompt[0]["role"] == "system"):
        prompt.insert(0, {"role": "system", "content": system})
    check_turn_order(prompt, field, end="user")
    chosen = _answer(record, columns, "chosen", roles)
    rejected = _answer(record, columns, "rejected", roles)
    if chosen.strip() == rejected.strip():
        raise RecordError(
            "same_answers",
            f"'{column(columns, 'chosen')}' and '{column(columns, 'rejected')}' are the same text",
            field=column(columns, "rejected"),
        )
    return {"messages": [*prompt, {"role": "assistant", "content": chosen}], "rejected": rejected}
