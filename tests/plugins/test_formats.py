"""Record shapes: each shape's examples, its column mapping, and every reason it rejects for."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from framework.data.records import check_text, preference_of
from framework.errors import RecordError
from framework.manager import build_plugin_manager


@pytest.fixture(scope="module")
def pm():
    return build_plugin_manager(entry_points=False)


def parse(pm, fmt: str, record, **data) -> dict:
    return pm.hook.tunesmith_parse_record(name=fmt, record=record, data_cfg=OmegaConf.create(data))


def rejected(pm, fmt: str, record, **data) -> RecordError:
    with pytest.raises(RecordError) as err:
        parse(pm, fmt, record, **data)
    return err.value


def test_every_shape_is_served(pm) -> None:
    assert {"alpaca", "sharegpt", "text", "pairs"} <= set(pm.names("format"))


# ----------------------------------------------------------------------------- alpaca


def test_alpaca_with_system_history_and_input(pm) -> None:
    record = {
        "system": "Be brief.",
        "history": [["Hi", "Hello!"]],
        "instruction": "Add.",
        "input": "2 + 3",
        "output": "5",
    }
    assert parse(pm, "alpaca", record) == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Add.\n\n2 + 3"},
            {"role": "assistant", "content": "5"},
        ]
    }


def test_alpaca_columns_are_mapped_in_config(pm) -> None:
    example = parse(
        pm,
        "alpaca",
        {"question": "Capital of France?", "answer": "Paris"},
        columns={"instruction": "question", "output": "answer"},
    )
    assert example["messages"] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
    ]


@pytest.mark.parametrize(
    "record,reason,message",
    [
        (["not", "a", "dict"], "not_object", "record must be an object with fields, got list"),
        ({"output": "x"}, "missing_field", "field 'instruction' is missing"),
        ({"instruction": "x"}, "missing_field", "field 'output' is missing"),
        ({"instruction": "x", "output": 5}, "wrong_type", "field 'output' must be text, got int"),
        ({"instruction": "  ", "output": "y"}, "empty_field", "field 'instruction' is empty"),
        (
            {"instruction": "x", "output": "y", "history": [["only one"]]},
            "wrong_type",
            "history[0] must be a [user, assistant] pair of texts",
        ),
        (
            {"instruction": "x", "output": "y", "history": [["a", " "]]},
            "empty_field",
            "history[0] has an empty turn",
        ),
    ],
)
def test_alpaca_rejections(pm, record, reason, message) -> None:
    err = rejected(pm, "alpaca", record)
    assert (err.reason, err.message) == (reason, message)


def test_mapped_column_names_appear_in_the_message(pm) -> None:
    err = rejected(
        pm, "alpaca", {"question": "q"}, columns={"instruction": "question", "output": "answer"}
    )
    assert err.message == "field 'answer' is missing" and err.field == "answer"


# ----------------------------------------------------------------------------- conversations


def test_messages_with_role_and_content(pm) -> None:
    turns = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
        {"role": "assistant", "content": "A2"},
    ]
    assert parse(pm, "sharegpt", {"messages": turns}) == {"messages": turns}


def test_sharegpt_conversations_from_value_and_a_system_field(pm) -> None:
    record = {
        "system": "Be brief.",
        "conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "Hi"}],
    }
    assert parse(pm, "sharegpt", record)["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "Hi"},
    ]


def test_conversation_as_json_text_as_in_a_csv_cell(pm) -> None:
    cell = '[{"from": "human", "value": "a, b"}, {"from": "gpt", "value": "c"}]'
    assert parse(pm, "sharegpt", {"conversations": cell})["messages"][1]["content"] == "c"


def test_roles_and_fields_mapped_in_config(pm) -> None:
    record = {"dialog": [{"speaker": "client", "text": "Q"}, {"speaker": "agent", "text": "A"}]}
    example = parse(
        pm,
        "sharegpt",
        record,
        columns={"messages": "dialog", "role": "speaker", "content": "text"},
        roles={"client": "user", "agent": "assistant"},
    )
    assert [m["role"] for m in example["messages"]] == ["user", "assistant"]


def _conv(*pairs):
    return {"conversations": [{"from": r, "value": v} for r, v in pairs]}


@pytest.mark.parametrize(
    "record,reason,message",
    [
        ({"text": "x"}, "missing_field", "field 'messages' is missing"),
        ({"messages": "not json"}, "wrong_type", "field 'messages' must be a list"),
        ({"messages": []}, "empty_field", "'messages' has no user or assistant turn"),
        (
            _conv(("human", "hi"), ("robot", "beep")),
            "bad_role",
            "conversations[1].from has role 'robot'; known roles are",
        ),
        (
            _conv(("gpt", "Hello"), ("human", "hi")),
            "bad_turn_order",
            "conversations[0] is an assistant turn: expected a user turn",
        ),
        (
            _conv(("human", "a"), ("human", "b"), ("gpt", "c")),
            "bad_turn_order",
            "conversations[1] is a user turn: expected an assistant turn",
        ),
        (
            _conv(("human", "a"), ("system", "b"), ("gpt", "c")),
            "bad_turn_order",
            "conversations[1] is a system turn: a system turn may only come first",
        ),
        (
            _conv(("human", "a"), ("gpt", "b"), ("human", "c")),
            "bad_turn_order",
            "the last turn of 'conversations' is a user turn; it must be the assistant's",
        ),
        (
            _conv(("human", "a"), ("gpt", " ")),
            "empty_field",
            "conversations[1].value (assistant) is empty",
        ),
        (
            {"messages": [{"role": "user", "content": 3}]},
            "wrong_type",
            "messages[0].content must be text, got int",
        ),
        ({"messages": [{"content": "x"}]}, "missing_field", "messages[0] has no 'role'"),
        ({"messages": ["hi"]}, "wrong_type", "messages[0] must be an object, got str"),
    ],
)
def test_conversation_rejections(pm, record, reason, message) -> None:
    err = rejected(pm, "sharegpt", record)
    assert err.reason == reason
    assert err.message.startswith(message), err.message


# ----------------------------------------------------------------------------- text


def test_text_records_and_a_mapped_column(pm) -> None:
    assert parse(pm, "text", {"text": "Once upon a time."}) == {"text": "Once upon a time."}
    assert parse(pm, "text", {"body": "正文"}, columns={"text": "body"}) == {"text": "正文"}
    assert rejected(pm, "text", {"body": "x"}).reason == "missing_field"
    assert rejected(pm, "text", {"text": ""}).reason == "empty_field"


# ----------------------------------------------------------------------------- pairs


def test_pairs_keep_the_rejected_answer_and_learn_the_chosen_one(pm) -> None:
    example = parse(pm, "pairs", {"prompt": "2+2?", "chosen": "4", "rejected": "5"})
    assert example == {
        "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
        "rejected": "5",
    }
    assert preference_of(example) == ([{"role": "user", "content": "2+2?"}], "4", "5")


def test_pairs_with_conversational_prompt_and_assistant_turns(pm) -> None:
    record = {
        "prompt": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "2+2?"},
        ],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": {"role": "assistant", "content": "5"},
        "system": "Be right.",
    }
    prompt, chosen, rejected_answer = preference_of(parse(pm, "pairs", record))
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user"]
    assert (chosen, rejected_answer) == ("4", "5")


@pytest.mark.parametrize(
    "record,reason,message",
    [
        (
            {"prompt": "q", "chosen": "same", "rejected": " same"},
            "same_answers",
            "'chosen' and 'rejected' are the same text",
        ),
        ({"prompt": "q", "chosen": "a"}, "missing_field", "field 'rejected' is missing"),
        (
            {
                "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "chosen": "a",
                "rejected": "b",
            },
            "bad_turn_order",
            "the last turn of 'prompt' is an assistant turn; it must be the user's",
        ),
        (
            {"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
            "bad_turn_order",
            "'chosen' must be one assistant turn",
        ),
    ],
)
def test_pairs_rejections(pm, record, reason, message) -> None:
    err = rejected(pm, "pairs", record)
    assert (err.reason, err.message) == (reason, message)


# ----------------------------------------------------------------------------- text checks


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "bad \udc80 byte",
            "messages[0].content holds undecodable character '\\udc80' at position 4",
        ),
        (
            "mojibake \ufffd",
            "messages[0].content holds a U+FFFD replacement character at position 9",
        ),
        ("nul \x00", "messages[0].content holds a NUL character at position 4"),
    ],
)
def test_text_that_cannot_be_trained_on_is_rejected(text, message) -> None:
    with pytest.raises(RecordError) as err:
        check_text({"messages": [{"role": "user", "content": text}], "_source": "f:1"})
    assert (err.value.reason, err.value.message) == ("bad_text", message)


#: A valid record of each in-tree shape.
RECORDS = {
    "alpaca": {"instruction": "Add.", "input": "2 + 3", "output": "5"},
    "sharegpt": {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    "text": {"text": "Some text."},
    "pairs": {"prompt": "2 + 2?", "chosen": "4", "rejected": "5"},
}  # fmt: skip


@pytest.mark.parametrize("fmt", sorted(RECORDS))
def test_each_shape_declares_what_it_produces_and_produces_it(pm, fmt: str) -> None:
    from framework import DataFormat

    info = pm.describe("format", fmt)
    assert isinstance(info, DataFormat) and info.description
    example = parse(pm, fmt, RECORDS[fmt])
    produced = {"chat": {"messages"}, "text": {"text"}, "pair": {"messages", "rejected"}}
    assert set(example) == produced[info.produces]
