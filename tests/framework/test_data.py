"""The prepare stage: rejects with reasons and lines, cleaning counted, honest splits, cache."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from framework.data.cleaning import example_key
from framework.data.prepare import prepare
from framework.errors import ConfigError, DataError
from framework.manager import build_plugin_manager
from framework.run import Run, read_jsonl
from tests.conftest import compose_config

WORDS = [
    "river",
    "mountain",
    "quiet",
    "lantern",
    "copper",
    "violet",
    "harbor",
    "meadow",
    "silver",
    "thunder",
    "orchard",
    "canyon",
    "pepper",
    "marble",
    "falcon",
    "willow",
    "ember",
    "glacier",
    "saddle",
    "tunnel",
    "velvet",
    "cobalt",
    "prairie",
    "beacon",
]


def sentences(n: int, seed: int = 0, words: int = 12) -> list[str]:
    """``n`` random, clearly different sentences."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) + f" #{i}" for i in range(n)]


def alpaca_rows(n: int, seed: int = 0) -> list[dict]:
    texts = sentences(2 * n, seed)
    return [{"instruction": texts[2 * i], "output": texts[2 * i + 1]} for i in range(n)]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def make_run(tmp_path: Path, *overrides: str, run_name: str = "run") -> Run:
    cfg = compose_config(
        ["model=tiny", "data=alpaca", f"data.cache_dir={tmp_path / 'cache'}", *overrides],
        run_dir=tmp_path / run_name,
    )
    return Run(cfg=cfg, dir=tmp_path / run_name, plugins=build_plugin_manager(entry_points=False))


def report_of(run: Run) -> dict:
    return json.loads((run.data_dir / "report.json").read_text("utf-8"))


# ----------------------------------------------------------------------------- rejects


def test_every_rejection_reason_is_written_with_its_message_and_line(tmp_path: Path) -> None:
    good = [json.dumps(r) for r in alpaca_rows(12)]
    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_bytes(
        "\n".join(
            [
                *good[:6],
                '{"instruction": "x", "output": }',  # 7
                '["a list"]',  # 8
                '{"output": "y"}',  # 9
                '{"instruction": "x", "output": 3}',  # 10
                '{"instruction": " ", "output": "y"}',  # 11
                '{"instruction": "bad \\udc80", "output": "y"}',  # 12
                *good[6:],
            ]
        ).encode()
        + b'\n{"instruction": "\xff", "output": "y"}\n'  # 19
    )
    chat = tmp_path / "chat.jsonl"
    convs = [
        {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
        for q, a in zip(sentences(6, 1), sentences(6, 2), strict=True)
    ]
    write_jsonl(
        chat,
        [
            *convs,
            {"conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]},
            {"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]},
        ],
    )
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"prompt": s, "chosen": "yes " + s, "rejected": "no " + s} for s in sentences(3, 3)]
        + [{"prompt": "q", "chosen": "same", "rejected": "same"}],
    )
    csv = tmp_path / "rows.csv"
    csv.write_text(
        "instruction,output\n"
        + "".join(f'"{r["instruction"]}","{r["output"]}"\n' for r in alpaca_rows(3, 4))
        + "a,b,c\n",
        encoding="utf-8",
    )
    sources = (
        f"+data.sources=[{{path: '{alpaca}'}}, {{path: '{chat}', format: sharegpt}}, "
        f"{{path: '{pairs}', format: pairs}}, {{path: '{csv}'}}]"
    )
    run = make_run(tmp_path, sources.replace("+data.sources", "data.sources"))
    prepare(run)
    rejects = {
        (r["source"], r["reason"]): r["message"] for r in read_jsonl(run.data_dir / "rejects.jsonl")
    }
    assert rejects == {
        (f"{alpaca}:7", "not_json"): "line is not JSON: Expecting value at column 32",
        (f"{alpaca}:8", "not_object"): "record must be an object with fields, got list",
        (f"{alpaca}:9", "missing_field"): "field 'instruction' is missing",
        (f"{alpaca}:10", "wrong_type"): "field 'output' must be text, got int",
        (f"{alpaca}:11", "empty_field"): "field 'instruction' is empty",
        (
            f"{alpaca}:12",
            "bad_text",
        ): "instruction holds undecodable character '\\udc80' at position 4".replace(
            "instruction", "messages[0].content", 1
        ),
        (
            f"{alpaca}:19",
            "not_utf8",
        ): "line is not valid UTF-8 (byte 0xff at column 18: invalid start byte)",
        (
            f"{chat}:7",
            "bad_role",
        ): "conversations[1].from has role 'robot'; known roles are assistant, "
        "bot, gpt, human, model, system, user (map others with data.roles)",
        (f"{chat}:8", "bad_turn_order"): "conversations[0] is an assistant turn: expected a user "
        "turn (turns go system?, user, assistant, user, assistant...)",
        (f"{pairs}:4", "same_answers"): "'chosen' and 'rejected' are the same text",
        (f"{csv}:5", "bad_row"): "row has 3 fields but the header has 2 (instruction, output); "
        "a field holding ',' must be quoted",
    }
    report = report_of(run)
    assert report["loaded"] == 19 + 8 + 4 + 4
    assert report["rejected_total"] == 11 and report["rejected"]["not_json"] == 1
    assert {s["name"]: s["rejected"] for s in report["sources"]} == {
        "alpaca": 7,
        "chat": 2,
        "pairs": 1,
        "rows": 1,
    }
    assert "## Rejection reasons" in (run.data_dir / "report.md").read_text("utf-8")


def test_on_error_raise_stops_with_the_same_message(tmp_path: Path) -> None:
    rows = alpaca_rows(4)
    rows.insert(2, {"instruction": "no answer"})
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    run = make_run(tmp_path, f"data.path={path}", "data.on_error=raise")
    with pytest.raises(DataError) as err:
        prepare(run)
    text = str(err.value)
    assert "Bad record (missing_field): field 'output' is missing" in text
    assert f"where: {path}:3 field 'output'" in text
    assert read_jsonl(run.data_dir / "rejects.jsonl")[0]["message"] == "field 'output' is missing"


def test_too_many_rejects_stop_the_stage_and_say_so(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}] * 3 + alpaca_rows(2)
    )
    run = make_run(tmp_path, f"data.path={path}", "data.max_reject_ratio=0.5")
    with pytest.raises(DataError) as err:
        prepare(run)
    assert "3 of 5 records of source 'd' were rejected (missing_field: 3)" in str(err.value)
    assert "data.max_reject_ratio=0.5" in str(err.value)
    assert len(read_jsonl(run.data_dir / "rejects.jsonl")) == 3


# ----------------------------------------------------------------------------- cleaning


def test_duplicates_and_near_duplicates_are_removed_before_splitting(tmp_path: Path) -> None:
    rows = alpaca_rows(30)
    long_answer = " ".join(sentences(6, 9))
    rows.append({"instruction": "Tell a story.", "output": long_answer})
    # exact twins once normalised: spaces around, and a decomposed é (NFD)
    rows.append({"instruction": "  " + rows[0]["instruction"] + "\n", "output": rows[0]["output"]})
    rows.append({"instruction": "Caf\u00e9 name?", "output": "Le Café"})
    rows.append({"instruction": "Cafe\u0301 name?", "output": "Le Café"})
    # a near twin: one word of a long answer changed
    rows.append({"instruction": "Tell a story.", "output": long_answer.replace("#2", "#7", 1)})
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    run = make_run(tmp_path, f"data.path={path}")
    splits = prepare(run)
    report = report_of(run)
    assert report["cleaning"]["dedup"] == 2 and report["cleaning"]["near_dedup"] == 1
    assert report["cleaning"]["normalized"] == 2
    removed = read_jsonl(run.data_dir / "removed.jsonl")
    assert {(r["step"], r["source"], r["duplicate_of"]) for r in removed} == {
        ("dedup", f"{path}:32", f"{path}:1"),
        ("dedup", f"{path}:34", f"{path}:33"),
        ("near_dedup", f"{path}:35", f"{path}:31"),
    }
    kept = [e for rows in splits.values() for e in rows]
    assert len(kept) == len(rows) - 3
    assert len({example_key(e) for e in kept}) == len(kept)

    # each step can be switched off
    off = make_run(
        tmp_path,
        f"data.path={path}",
        "data.clean.dedup=false",
        "data.clean.near_dedup=false",
        "data.clean.normalize=false",
        run_name="off",
    )
    assert sum(len(v) for v in prepare(off).values()) == len(rows)
    assert report_of(off)["cleaning"]["dedup"] == 0


def test_length_filter_drops_or_truncates_by_token_count(tmp_path: Path) -> None:
    rows = alpaca_rows(20)
    rows.append({"instruction": "Long question " + " ".join(WORDS * 3), "output": "short"})
    rows.append({"instruction": "Short question", "output": "Long answer " + " ".join(WORDS * 3)})
    path = write_jsonl(tmp_path / "d.jsonl", rows)

    trunc = make_run(tmp_path, f"data.path={path}", "data.max_length=256")
    kept = [e for v in prepare(trunc).values() for e in v]
    removed = read_jsonl(trunc.data_dir / "removed.jsonl")
    # the long prompt leaves no answer token within 256 tokens; the long answer is cut but kept
    assert [(r["step"], r["source"]) for r in removed] == [
        ("no_loss_after_truncation", f"{path}:21")
    ]
    assert len(kept) == 21
    report = report_of(trunc)
    assert report["cleaning"]["truncated"] == 1 and report["tokens"]["over_max_length"] == 1

    drop = make_run(
        tmp_path,
        f"data.path={path}",
        "data.max_length=256",
        "data.clean.too_long=drop",
        run_name="drop",
    )
    assert sum(len(v) for v in prepare(drop).values()) == 20
    assert report_of(drop)["cleaning"]["too_long"] == 2


# ----------------------------------------------------------------------------- splits


def test_split_is_seeded_deterministic_and_without_leakage(tmp_path: Path) -> None:
    rows = alpaca_rows(50)
    a = write_jsonl(tmp_path / "a.jsonl", rows)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    b = write_jsonl(tmp_path / "b.jsonl", shuffled)

    run_a = make_run(tmp_path, f"data.path={a}", "data.cache=false", run_name="a")
    splits_a = prepare(run_a)
    assert {k: len(v) for k, v in splits_a.items()} == {"train": 40, "val": 5, "test": 5}
    keys = {s: {example_key(e) for e in v} for s, v in splits_a.items()}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["val"]
    assert not keys["val"] & keys["test"]

    # the same examples in another order, from another file: the same splits and hashes
    run_b = make_run(tmp_path, f"data.path={b}", "data.cache=false", run_name="b")
    splits_b = prepare(run_b)
    assert {s: [example_key(e) for e in v] for s, v in splits_b.items()} == {
        s: [example_key(e) for e in v] for s, v in splits_a.items()
    }
    assert report_of(run_a)["splits"] == report_of(run_b)["splits"]

    other = make_run(tmp_path, f"data.path={a}", "seed=7", "data.cache=false", run_name="seed7")
    assert (
        report_of_after(other)["splits"]["test"]["sha256"]
        != report_of(run_a)["splits"]["test"]["sha256"]
    )


def report_of_after(run: Run) -> dict:
    prepare(run)
    return report_of(run)


def test_user_given_test_file_wins_over_a_train_twin(tmp_path: Path) -> None:
    rows = alpaca_rows(30)
    test_rows = alpaca_rows(4, seed=5)
    train = write_jsonl(tmp_path / "train.jsonl", [*rows, test_rows[0]])  # a twin of a test row
    test = write_jsonl(tmp_path / "test.jsonl", test_rows)
    run = make_run(tmp_path, f"data.path={train}", f"data.test_path={test}")
    splits = prepare(run)
    assert [example_key(e) for e in splits["test"]] == sorted(
        example_key(
            {
                "messages": [
                    {"role": "user", "content": r["instruction"]},
                    {"role": "assistant", "content": r["output"]},
                ]
            }
        )
        for r in test_rows
    )
    # the rest is cut train/val in the ratio 0.8 : 0.1, the twin went to nobody but the test
    assert {k: len(v) for k, v in splits.items()} == {"train": 27, "val": 3, "test": 4}
    removed = read_jsonl(run.data_dir / "removed.jsonl")
    assert [(r["step"], r["source"], r["duplicate_of"]) for r in removed] == [
        ("dedup", f"{train}:31", f"{test}:1")
    ]


def test_sources_mix_with_a_cap_and_a_weight(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(20, seed=1))
    chats = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": r}]}
        for q, r in zip(sentences(40, 2), sentences(40, 3), strict=True)
    ]
    b = write_jsonl(tmp_path / "b.jsonl", chats)
    run = make_run(
        tmp_path,
        f"data.sources=[{{name: facts, path: '{a}', weight: 2}}, "
        f"{{name: chats, path: '{b}', format: sharegpt, max_samples: 10}}]",
    )
    splits = prepare(run)
    report = report_of(run)
    by_name = {s["name"]: s for s in report["sources"]}
    assert by_name["facts"]["kept"] == 20 and by_name["facts"]["train"] == 32  # 16 twice
    assert by_name["chats"]["kept"] == 10 and by_name["chats"]["train"] == 8
    assert report["cleaning"]["max_samples"] == 30
    origins = [e["_origin"] for e in splits["train"]]
    assert origins.count("facts") == 32 and origins.count("chats") == 8
    assert {e["_origin"] for e in splits["test"]} == {"facts", "chats"}


def test_a_misspelled_source_key_is_a_config_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(5))
    run = make_run(tmp_path, f"data.sources=[{{path: '{path}', wieght: 2}}]")
    with pytest.raises(
        ConfigError, match="Unknown key 'wieght' in a data source. Did you mean 'weight'"
    ):
        prepare(run)


# ----------------------------------------------------------------------------- review


def test_spot_check_marks_what_carries_no_loss(tmp_path: Path) -> None:
    rows = [{"instruction": f"Question {s}", "output": f"ANSWER {s}"} for s in sentences(20)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    run = make_run(tmp_path, f"data.path={path}", "data.spot_check=3")
    prepare(run)
    text = (run.data_dir / "spot_check.md").read_text("utf-8")
    assert text.count("## ") == 3
    blocks = text.split("````text\n")[1:]
    for block in blocks:
        body = block.split("\n````")[0]
        # the prompt with its template is inside the brackets, the answer and <|im_end|> outside
        assert body.startswith("⟦<|im_start|>user\nQuestion ")
        masked, learned = body.split("⟧", 1)
        assert masked.endswith("<|im_start|>assistant\n")
        assert learned.startswith("ANSWER ") and "<|im_end|>" in learned and "⟦" not in learned


def test_report_files_and_token_statistics(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", alpaca_rows(20))
    run = make_run(tmp_path, f"data.path={path}")
    prepare(run)
    report = report_of(run)
    stats = report["tokens"]["all"]
    assert set(stats) == {"count", "min", "mean", "p50", "p95", "max"} and stats["count"] == 20
    assert stats["min"] <= stats["p50"] <= stats["p95"] <= stats["max"]
    assert (run.data_dir / "lengths.png").read_bytes()[:4] == b"\x89PNG"
    md = (run.data_dir / "report.md").read_text("utf-8")
    assert "| split: train | 16 |" in md and report["splits"]["train"]["sha256"] in md


def test_objective_that_cannot_train_on_the_examples_is_named(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": s} for s in sentences(10)])
    run = make_run(tmp_path, "data=text", f"data.path={path}")
    with pytest.raises(DataError) as err:
        prepare(run)
    assert "objective 'sft' does not train on 'text' examples" in str(err.value)
    assert "objective=pretrain" in str(err.value)


# ----------------------------------------------------------------------------- cache


def test_prepared_data_is_reused_by_a_later_run_and_redone_when_inputs_change(
    tmp_path: Path, monkeypatch
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", alpaca_rows(20))
    first = make_run(tmp_path, f"data.path={path}", run_name="first")
    prepare(first)
    train = (first.data_dir / "train.jsonl").read_bytes()

    import framework.data.prepare

    def no_tokenizer(run):  # a reused prepare loads no tokenizer and no model
        raise AssertionError("prepared again")

    monkeypatch.setattr(framework.data.prepare, "prepare_tokenizer", no_tokenizer)
    second = make_run(tmp_path, f"data.path={path}", "data.batch_size=2", run_name="second")
    prepare(second)
    assert (second.data_dir / "train.jsonl").read_bytes() == train
    assert (second.data_dir / "spot_check.md").exists()

    # a changed input file, or a changed relevant setting, prepares again
    write_jsonl(path, alpaca_rows(21))
    with pytest.raises(AssertionError, match="prepared again"):
        prepare(make_run(tmp_path, f"data.path={path}", run_name="third"))
    write_jsonl(path, alpaca_rows(20))
    with pytest.raises(AssertionError, match="prepared again"):
        prepare(make_run(tmp_path, f"data.path={path}", "data.split.test=0.2", run_name="fourth"))


def test_docs_list_every_rejection_reason_and_cleaning_key() -> None:
    from framework.cli import CONFIG_DIR
    from framework.data.records import REASONS

    docs = (Path(CONFIG_DIR).parent / "docs" / "data.md").read_text("utf-8")
    for reason in REASONS:
        assert f"| `{reason}` |" in docs, (
            f"docs/data.md does not explain the reject reason {reason}"
        )
    clean = compose_config(["data=demo"]).data.clean
    for key in clean:
        assert f"`{key}:" in docs, f"docs/data.md does not explain data.clean.{key}"


def test_near_dedup_estimates_jaccard_and_catches_twins_without_spaces() -> None:
    """The MinHash estimate follows the exact Jaccard similarity of the character 5-grams, so
    twins above the threshold go and distinct texts stay, in English and in Chinese."""
    from framework.data.cleaning import minhash_signatures, near_dedup

    def grams(text: str) -> set[str]:
        text = " ".join(text.lower().split())
        return {text[i : i + 5] for i in range(len(text) - 4)}

    rng = random.Random(3)
    words = [f"w{i}" for i in range(300)]
    pairs = []
    for _ in range(40):
        a = " ".join(rng.choice(words) for _ in range(60))
        cut = rng.randrange(1, 40)
        b = a[: cut * 4] + " ".join(rng.choice(words) for _ in range(cut)) + a[cut * 8 :]
        pairs.append((a, b))
    sig = minhash_signatures([t for pair in pairs for t in pair], ngram=5, num_perm=256)
    for k, (a, b) in enumerate(pairs):
        exact = len(grams(a) & grams(b)) / len(grams(a) | grams(b))
        estimate = float((sig[2 * k] == sig[2 * k + 1]).mean())
        assert abs(estimate - exact) < 0.15, (exact, estimate)

    story = "从前有一座山，山里有一座庙，庙里有一个老和尚在给小和尚讲故事。" * 3
    rows = [
        {"instruction": "讲个故事", "output": story},
        {"instruction": "讲个故事", "output": story.replace("老和尚", "老师傅", 1)},
        {"instruction": "讲个笑话", "output": "今天天气很好，我们去公园散步吧，然后一起吃午饭。"},
        {"instruction": "Tell a story.", "output": "Once upon a time there was a mountain."},
    ]
    kept, removed = near_dedup([{**r, "_source": f"f:{i}"} for i, r in enumerate(rows)])
    assert [r["duplicate_of"] for r in removed] == ["f:0"]
    assert [r["source"] for r in removed] == ["f:1"] and len(kept) == 3
    assert near_dedup([]) == ([], [])
