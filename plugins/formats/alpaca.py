"""The alpaca record shape: ``instruction``, ``input``, ``output`` (+ ``system``, ``history``).

``history`` is a list of earlier ``[user, assistant]`` pairs, put before the instruction.
Field names are mapped with ``data.columns`` (``{instruction: question, output: answer}``).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from framework import DataFormat, hookimpl
from framework.data.records import column, list_field, require_object, text_field
from framework.errors import RecordError


@hookimpl
def tunesmith_provides() -> list[DataFormat]:
    return [
        DataFormat(
            "alpaca",
            produces="chat",
            description="instruction / input / output records (+ system, history)",
        )
    ]


def _history(record: Any, columns: Any) -> list[dict[str, str]]:
    name = column(columns, "history")
    value = record.get(name)
    if value is None or value == "":  # absent, or an empty CSV cell
        return []
    messages = []
    for i, pair in enumerate(list_field(value, name)):
        if (
            not isinstance(pair, list | tuple)
            or len(pair) != 2
            or not all(isinstance(p, str) for p in pair)
        ):
            raise RecordError(
                "wrong_type", f"{name}[{i}] must be a [user, assistant] pair of texts", field=name
            )
        if not pair[0].strip() or not pair[1].strip():
            raise RecordError("empty_field", f"{name}[{i}] has an empty turn", field=name)
        messages += [
            {"role": "user", "content": pair[0]},
            {"role": "assistant", "content": pair[1]},
        ]
    return messages


@hookimpl
def tunesmith_parse_record(name: str, record: Any, data_cfg: DictConfig) -> dict | None:
    if name != "alpaca":
        return None
    record = require_object(record)
    columns = data_cfg.get("columns")
    instruction = text_field(record, columns, "instruction", required=True)
    user_input = text_field(record, columns, "input", required=False)
    output = text_field(record, columns, "output", required=True)
    system = text_field(record, columns, "system", required=False)
    prompt = f"{instruction}\n\n{user_input}" if user_input.strip() else instruction
    messages = [{"role": "system", "content": system}] if system.strip() else []
    messages += _history(record, columns)
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return {"messages": messages}
