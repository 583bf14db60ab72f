"""The alpaca record shape: ``instruction``, ``input``, ``output`` (+ optional ``system``)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from framework import hookimpl
from framework.errors import RecordError

FIELDS = ("instruction", "input", "output", "system")


@hookimpl
def tunesmith_provides() -> dict[str, list[str]]:
    return {"format": ["alpaca"]}


def _field(record: dict, columns: Any, key: str, required: bool) -> str:
    column = str(columns.get(key, key)) if columns else key
    value = record.get(column)
    if value is None:
        if required:
            raise RecordError("missing_field", f"field '{column}' is missing", field=column)
        return ""
    if not isinstance(value, str):
        raise RecordError(
            "wrong_type", f"field '{column}' must be text, got {type(value).__name__}", field=column
        )
    return value


@hookimpl
def tunesmith_parse_record(name: str, record: Any, data_cfg: DictConfig) -> dict | None:
    if name != "alpaca":
        return None
    if not isinstance(record, dict):
        raise RecordError(
            "not_object", f"record must be a JSON object, got {type(record).__name__}"
        )
    columns = data_cfg.get("columns")
    instruction = _field(record, columns, "instruction", required=True)
    user_input = _field(record, columns, "input", required=False)
    output = _field(record, columns, "output", required=True)
    system = _field(record, columns, "system", required=False)
    for key, value in (("instruction", instruction), ("output", output)):
        if not value.strip():
            column = str(columns.get(key, key)) if columns else key
            raise RecordError("empty_field", f"field '{column}' is empty", field=column)
    prompt = f"{instruction}\n\n{user_input}" if user_input.strip() else instruction
    messages = [{"role": "system", "content": system}] if system.strip() else []
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return {"messages": messages}
