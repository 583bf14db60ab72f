"""Conversations: ``messages`` with ``role``/``content``, or ShareGPT's ``conversations``
with ``from``/``value`` (roles human/gpt/system, or any mapped with ``data.roles``).

An optional ``system`` field is put first. Turns must go system?, user, assistant, user, ...
and end with an assistant turn; every assistant turn is learned.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from framework import DataFormat, hookimpl
from framework.data.records import (
    check_turn_order,
    column,
    list_field,
    parse_turns,
    require_object,
    text_field,
)
from framework.errors import RecordError


@hookimpl
def tunesmith_provides() -> list[DataFormat]:
    return [
        DataFormat(
            "sharegpt",
            produces="chat",
            description="conversations: messages (role/content) or ShareGPT's from/value",
        )
    ]


@hookimpl
def tunesmith_parse_record(name: str, record: Any, data_cfg: DictConfig) -> dict | None:
    if name != "sharegpt":
        return None
    record = require_object(record)
    columns = data_cfg.get("columns")
    field = column(columns, "messages")
    if field == "messages" and field not in record and "conversations" in record:
        field = "conversations"  # the ShareGPT spelling, found without mapping
    if record.get(field) is None:
        raise RecordError(
            "missing_field",
            f"field '{field}' is missing (a conversation is 'messages' or 'conversations')",
            field=field,
        )
    messages = parse_turns(list_field(record[field], field), field, columns, data_cfg.get("roles"))
    system = text_field(record, columns, "system", required=False)
    if system.strip():
        if messages and messages[0]["role"] == "system":
            raise RecordError(
                "bad_turn_order",
                f"record has both a '{column(columns, 'system')}' field and a system turn",
                field=field,
            )
        messages.insert(0, {"role": "system", "content": system})
    check_turn_order(messages, field, end="assistant")
    return {"messages": messages}
