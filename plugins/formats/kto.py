"""Unpaired feedback for KTO (``data=kto``): ``prompt``, ``completion``, ``label``.

``prompt`` is text or a list of turns ending with a user turn (+ optional ``system``);
``completion`` is text or one assistant turn; ``label`` says whether the completion is
desirable: ``true``/``false`` (also ``1``/``0``, ``"true"``/``"false"``, ``"yes"``/``"no"``
from CSV). The example is the conversation ending with the completion, plus ``label``.
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

TRUE, FALSE = ("true", "1", "yes", "good"), ("false", "0", "no", "bad")


@hookimpl
def tunesmith_provides() -> list[DataFormat]:
    return [
        DataFormat(
            "kto",
            produces="unpaired",
            description="unpaired feedback: prompt, completion, label true|false (for KTO)",
        )
    ]


def label_of(value: Any, name: str) -> bool:
    """A desirable/undesirable label from a bool, 0/1 or text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    if value is None:
        raise RecordError("missing_field", f"field '{name}' is missing", field=name)
    raise RecordError(
        "wrong_type", f"field '{name}' must be true or false, got {value!r}", field=name
    )


@hookimpl
def tunesmith_parse_record(name: str, record: Any, data_cfg: DictConfig) -> dict | None:
    if name != "kto":
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
    answer_field = column(columns, "completion")
    value = record.get(answer_field)
    if isinstance(value, Mapping):
        value = [value]
    if isinstance(value, list):
        turns = parse_turns(value, answer_field, columns, roles)
        if len(turns) != 1 or turns[0]["role"] != "assistant":
            raise RecordError(
                "bad_turn_order", f"'{answer_field}' must be one assistant turn", answer_field
            )
        completion = turns[0]["content"]
    else:
        completion = text_field(record, columns, "completion", required=True)
    label = label_of(record.get(column(columns, "label")), column(columns, "label"))
    return {"messages": [*prompt, {"role": "assistant", "content": completion}], "label": label}
