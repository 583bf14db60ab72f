"""Preference pairs (``data=pairs``): a prompt, a chosen and a rejected answer.

The shapes people have, recognised per record:

* ``{prompt, chosen, rejected}`` (+ optional ``system``): ``prompt`` is text or a list of
  turns ending with a user turn; ``chosen``/``rejected`` are text or one assistant turn
  (``{"role": "assistant", "content": ...}``, alone or in a list).
* Whole conversations (HH-RLHF, UltraFeedback): ``chosen`` and ``rejected`` are lists of turns
  that share a prefix (``prompt`` optional): the shared turns are the prompt and the one turn
  after them each side's answer. HH-RLHF's plain text (``"\\n\\nHuman: ... \\n\\nAssistant:
  ..."``) is read the same way.
* LLaMA-Factory's alpaca ranking shape: ``instruction``, ``input`` (+ ``system``,
  ``history``), ``chosen``, ``rejected``.
* ShareGPT with ``conversations`` (or ``messages``) ending with a user turn, plus ``chosen``
  and ``rejected`` turns (``{"from": "gpt", "value": ...}``).

The example is the conversation ending with the chosen answer (so SFT learns the chosen
answers) plus ``rejected``; ``framework.data.records.preference_of`` splits it again. Bad
pairs are rejected with ``file:line``: identical answers (``same_answers``), an empty side
(``empty_field``), a prompt that does not end with a user turn (``bad_turn_order``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
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

#: HH-RLHF's turn markers in plain-text conversations.
HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")


@hookimpl
def tunesmith_provides() -> list[DataFormat]:
    return [
        DataFormat(
            "pairs",
            produces="pair",
            description="preference pairs: prompt/chosen/rejected, whole conversations "
            "(HH, UltraFeedback), alpaca or ShareGPT ranking shapes",
        )
    ]


def hh_turns(text: str, name: str) -> list[dict[str, str]]:
    """Turns of an HH-RLHF conversation in plain text (``\\n\\nHuman: ...\\n\\nAssistant: ...``)."""
    parts = HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise RecordError(
            "wrong_type",
            f"'{name}' is text without Human:/Assistant: turns; give a 'prompt' field too",
            field=name,
        )
    turns = []
    for who, content in zip(parts[1::2], parts[2::2], strict=True):
        if not content.strip():
            raise RecordError("empty_field", f"a {who} turn of '{name}' is empty", field=name)
        turns.append({"role": "user" if who == "Human" else "assistant", "content": content})
    return turns


def _side(
    record: Mapping, columns: Any, key: str, roles: Any, hh: bool
) -> str | list[dict[str, str]]:
    """One side: its text, or its turns when it is a list (or HH text, when ``hh``)."""
    name = column(columns, key)
    value = record.get(name)
    if isinstance(value, Mapping):
        value = [value]
    if isinstance(value, list):
        return parse_turns(value, name, columns, roles)
    text = text_field(record, columns, key, required=True)
    return hh_turns(text, name) if hh and HH_TURN.match(text) else text


def _answer(side: str | list[dict[str, str]], name: str) -> str:
    if isinstance(side, str):
        return side
    if len(side) != 1 or side[0]["role"] != "assistant":
        raise RecordError("bad_turn_order", f"'{name}' must be one assistant turn", field=name)
    return side[0]["content"]


def _split_conversations(
    chosen: list[dict[str, str]], rejected: list[dict[str, str]], names: tuple[str, str]
) -> tuple[list[dict[str, str]], str, str]:
    """The shared turns of two conversations and the one answer turn after them on each side."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == len(chosen) == len(rejected):
        raise RecordError(
            "same_answers", f"'{names[0]}' and '{names[1]}' are the same conversation", names[1]
        )
    for side, name in ((chosen, names[0]), (rejected, names[1])):
        rest = side[n:]
        if len(rest) != 1 or rest[0]["role"] != "assistant":
            raise RecordError(
                "bad_turn_order",
                f"'{names[0]}' and '{names[1]}' must share every turn but their last "
                f"assistant turn; after {n} shared turns '{name}' has {len(rest)} more",
                field=name,
            )
    return chosen[:n], chosen[n]["content"], rejected[n]["content"]


def _prompt(record: Mapping, columns: Any, roles: Any) -> tuple[list[dict[str, str]], str] | None:
    """The prompt turns and the field they came from; ``None`` when the record has none."""
    field = column(columns, "prompt")
    if record.get(field) is not None:
        if isinstance(record[field], list):
            return parse_turns(record[field], field, columns, roles), field
        text = text_field(record, columns, "prompt", True)
        return [{"role": "user", "content": text}], field
    if column(columns, "instruction") in record:  # alpaca ranking shape
        from plugins.formats.alpaca import _history

        instruction = text_field(record, columns, "instruction", required=True)
        user_input = text_field(record, columns, "input", required=False)
        text = f"{instruction}\n\n{user_input}" if user_input.strip() else instruction
        return [*_history(record, columns), {"role": "user", "content": text}], "instruction"
    for field in ("conversations", "messages"):  # ShareGPT ranking shape
        if record.get(field) is not None:
            turns = list_field(record[field], field)
            return parse_turns(turns, field, columns, roles), field
    return None


@hookimpl
def tunesmith_parse_record(name: str, record: Any, data_cfg: DictConfig) -> dict | None:
    if name != "pairs":
        return None
    record = require_object(record)
    columns, roles = data_cfg.get("columns"), data_cfg.get("roles")
    names = (column(columns, "chosen"), column(columns, "rejected"))
    given = _prompt(record, columns, roles)
    chosen = _side(record, columns, "chosen", roles, hh=given is None)
    rejected = _side(record, columns, "rejected", roles, hh=given is None)
    both = isinstance(chosen, list) and isinstance(rejected, list)
    if both and (chosen[0]["role"] != "assistant" or rejected[0]["role"] != "assistant"):
        # whole conversations: the shared turns are the prompt
        prompt, good, bad = _split_conversations(chosen, rejected, names)
        field = names[0]
        if not prompt and given is not None:
            prompt, field = given
    else:
        if given is None:
            raise RecordError(
                "missing_field",
                f"field '{column(columns, 'prompt')}' is missing (or give 'instruction', "
                "'conversations', or whole conversations as chosen/rejected)",
                field=column(columns, "prompt"),
            )
        prompt, field = given
        good, bad = _answer(chosen, names[0]), _answer(rejected, names[1])
    system = text_field(record, columns, "system", required=False)
    if system.strip() and not (prompt and prompt[0]["role"] == "system"):
        prompt.insert(0, {"role": "system", "content": system})
    check_turn_order(prompt, field, end="user")
    for answer, side in ((good, names[0]), (bad, names[1])):
        if not answer.strip():
            raise RecordError("empty_field", f"the answer in '{side}' is empty", field=side)
    if good.strip() == bad.strip():
        raise RecordError(
            "same_answers", f"'{names[0]}' and '{names[1]}' are the same text", field=names[1]
        )
    return {"messages": [*prompt, {"role": "assistant", "content": good}], "rejected": bad}
