"""Preference data: every pair shape people have, unpaired KTO feedback, bad pairs rejected
with file:line, and too-long pairs cut on the prompt side, the same way for both answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from framework.data.records import preference_of
from framework.errors import RecordError
from framework.manager import build_plugin_manager
from plugins.objectives import preference as pref
from tests.conftest import compose_config
from tests.helpers import new_run


@pytest.fixture(scope="module")
def pm():
    return build_plugin_manager(entry_points=False)


def parse(pm, fmt: str, record, **data) -> dict:
    return pm.hook.tunesmith_parse_record(name=fmt, record=record, data_cfg=OmegaConf.create(data))


def split(pm, record) -> tuple[list[dict], str, str]:
    return preference_of(parse(pm, "pairs", record))


USER = [{"role": "user", "content": "What is 2 + 2?"}]


def test_prompt_chosen_rejected_as_text_or_turns(pm) -> None:
    assert split(pm, {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}) == (
        USER, "4", "5"
    )  # fmt: skip
    turns = {
        "prompt": USER,
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": {"role": "assistant", "content": "5"},
    }
    assert split(pm, turns) == (USER, "4", "5")


def test_whole_conversations_are_split_at_their_common_prefix(pm) -> None:
    # UltraFeedback (binarized): the prompt as text, and each side the whole conversation
    record = {
        "prompt": "What is 2 + 2?",
        "chosen": [*USER, {"role": "assistant", "content": "4"}],
        "rejected": [*USER, {"role": "assistant", "content": "5"}],
    }
    assert split(pm, record) == (USER, "4", "5")
    # multi-turn, no prompt field: the shared turns are the prompt
    history = [*USER, {"role": "assistant", "content": "4"}, {"role": "user", "content": "x2?"}]
    record = {
        "chosen": [*history, {"role": "assistant", "content": "8"}],
        "rejected": [*history, {"role": "assistant", "content": "6"}],
    }
    assert split(pm, record) == (history, "8", "6")


def test_hh_rlhf_plain_text_conversations(pm) -> None:
    record = {
        "chosen": "\n\nHuman: What is 2 + 2?\n\nAssistant: It is 4.",
        "rejected": "\n\nHuman: What is 2 + 2?\n\nAssistant: Go away.",
    }
    assert split(pm, record) == (USER, "It is 4.", "Go away.")


def test_alpaca_and_sharegpt_ranking_shapes(pm) -> None:
    alpaca = {"instruction": "Add.", "input": "2 + 2", "chosen": "4", "rejected": "5"}
    prompt, chosen, rejected = split(pm, {**alpaca, "system": "Be brief."})
    assert prompt == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Add.\n\n2 + 2"},
    ]
    assert (chosen, rejected) == ("4", "5")
    sharegpt = {
        "conversations": [{"from": "human", "value": "What is 2 + 2?"}],
        "chosen": {"from": "gpt", "value": "4"},
        "rejected": {"from": "gpt", "value": "5"},
    }
    assert split(pm, sharegpt) == (USER, "4", "5")


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"prompt": "2+2?", "chosen": "4", "rejected": " 4 "}, "same_answers"),
        ({"prompt": "2+2?", "chosen": "", "rejected": "5"}, "empty_field"),
        ({"prompt": "2+2?", "chosen": "4", "rejected": "   "}, "empty_field"),
        (
            {"prompt": [*USER, {"role": "assistant", "content": "4"}], "chosen": "a",
             "rejected": "b"},
            "bad_turn_order",
        ),
        ({"chosen": [*USER, {"role": "assistant", "content": "4"}],
          "rejected": [*USER, {"role": "assistant", "content": "4"}]}, "same_answers"),
        ({"chosen": "4", "rejected": "5"}, "missing_field"),
    ],
)  # fmt: skip
def test_bad_pairs_are_rejected(pm, record, reason: str) -> None:
    with pytest.raises(RecordError) as err:
        parse(pm, "pairs", record)
    assert err.value.reason == reason


def test_kto_records_and_labels(pm) -> None:
    got = parse(pm, "kto", {"prompt": "2+2?", "completion": "4", "label": True})
    assert got == {
        "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
        "label": True,
    }
    for raw, want in ((False, False), (1, True), ("false", False), ("Yes", True)):
        record = {"prompt": "2+2?", "completion": "5", "label": raw}
        assert parse(pm, "kto", record)["label"] is want
    for raw in ("maybe", 2, None):
        with pytest.raises(RecordError):
            parse(pm, "kto", {"prompt": "2+2?", "completion": "5", "label": raw})
    assert pm.describe("format", "kto").produces == "unpaired"


def test_bad_pairs_go_to_rejects_by_file_and_line(tmp_path: Path) -> None:
    from framework.data.prepare import prepare

    rows = [
        {"prompt": f"{a} + 1 =", "chosen": str(a + 1), "rejected": str(a + 2)} for a in range(30)
    ]
    rows[3] = {"prompt": "x", "chosen": "same", "rejected": "same"}
    rows[7] = {"prompt": "x", "chosen": "", "rejected": "y"}
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = compose_config(
        ["model=tiny", "data=pairs", f"data.path={path}", "objective=dpo", "data.cache=false"],
        run_dir=tmp_path / "run",
    )
    run = new_run(cfg)
    run.dir.mkdir(parents=True)
    splits = prepare(run)
    assert sum(len(v) for v in splits.values()) == 28
    rejects = [json.loads(line) for line in (run.data_dir / "rejects.jsonl").open()]
    assert [(r["source"], r["reason"]) for r in rejects] == [
        (f"{path}:4", "same_answers"),
        (f"{path}:8", "empty_field"),
    ]


def test_too_long_pairs_lose_the_start_of_the_prompt_first_and_alike(tmp_path: Path) -> None:
    cfg = compose_config(["model=tiny"], run_dir=tmp_path / "run")
    _, tokenizer = new_run(cfg).ensure_model()
    example = {
        "messages": [
            {"role": "user", "content": "start " + "blah " * 60 + "the question end"},
            {"role": "assistant", "content": "a short answer"},
        ],
        "rejected": "a somewhat longer rejected answer here",
    }
    full = pref.encode_pair(example, tokenizer, 10_000)
    longest = max(
        sum(lab != -100 for lab in full["labels"]),
        sum(lab != -100 for lab in full["rejected_labels"]),
    )
    limit = 2 * longest + 4  # half of it holds either answer whole
    cut = pref.encode_pair(example, tokenizer, limit)
    assert len(full["input_ids"]) > limit
    assert max(len(cut["input_ids"]), len(cut["rejected_input_ids"])) <= limit

    def parts(ids, labels):
        k = next(i for i, lab in enumerate(labels) if lab != -100)
        return list(ids[:k]), list(ids[k:])

    prompt_c, answer_c = parts(cut["input_ids"], cut["labels"])
    prompt_r, answer_r = parts(cut["rejected_input_ids"], cut["rejected_labels"])
    assert prompt_c == prompt_r  # the same prompt tokens before both answers
    full_prompt, full_answer = parts(full["input_ids"], full["labels"])
    assert full_prompt[-len(prompt_c) :] == prompt_c  # the prompt's end is kept
    assert answer_c == full_answer  # the answers are whole
    assert answer_r == parts(full["rejected_input_ids"], full["rejected_labels"])[1]
    # answers longer than what is left after half a prompt are cut at their end, alike
    tight = pref.truncate(list(range(100)), [list(range(40)), list(range(70))], 64)
    assert tight == (list(range(68, 100)), [list(range(32)), list(range(32))])
