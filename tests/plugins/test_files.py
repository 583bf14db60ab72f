"""File readers: every record comes with the line it starts on; bad rows are reported, not lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from framework.errors import DataError, RecordError
from framework.manager import build_plugin_manager


@pytest.fixture(scope="module")
def pm():
    return build_plugin_manager(entry_points=False)


def read(pm, path: Path, **data) -> list[tuple[int, object]]:
    records = pm.hook.tunesmith_read_file(path=path, data_cfg=OmegaConf.create(data))
    assert records is not None, f"no reader for {path.suffix}"
    return list(records)


def reasons(rows) -> dict[int, str]:
    return {line: r.reason for line, r in rows if isinstance(r, RecordError)}


# ----------------------------------------------------------------------------- JSON lines


def test_jsonl_gives_line_numbers_skips_blank_lines_and_rejects_bad_lines(pm, tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(
        b'{"a": 1}\n\n{"a": 2, oops}\n{"a": "\xff\xfe"}\n{"a": "\xe4\xb8\xad\xe6\x96\x87"}\n'
    )
    rows = read(pm, path)
    assert [line for line, _ in rows] == [1, 3, 4, 5]
    assert rows[0][1] == {"a": 1} and rows[3][1] == {"a": "中文"}
    assert reasons(rows) == {3: "not_json", 4: "not_utf8"}
    assert "line is not JSON" in rows[1][1].message
    assert "not valid UTF-8" in rows[2][1].message


# ----------------------------------------------------------------------------- JSON


def test_json_array_records_carry_the_line_they_start_on(pm, tmp_path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[\n  {"a": 1},\n  {\n    "a": 2\n  },\n  {"a": "x"}\n]\n', encoding="utf-8")
    assert read(pm, path) == [(2, {"a": 1}), (3, {"a": 2}), (6, {"a": "x"})]


def test_json_object_holding_one_list_or_records_by_id(pm, tmp_path) -> None:
    one_list = tmp_path / "wrapped.json"
    one_list.write_text('{"version": "1",\n "data": [\n {"a": 1},\n {"a": 2}]}', encoding="utf-8")
    assert read(pm, one_list) == [(3, {"a": 1}), (4, {"a": 2})]
    by_id = tmp_path / "by_id.json"
    by_id.write_text('{\n"x": {"a": 1},\n"y": {"a": 2}\n}', encoding="utf-8")
    assert read(pm, by_id) == [(2, {"a": 1}), (3, {"a": 2})]


def test_json_lines_saved_as_json_is_read_as_json_lines(pm, tmp_path) -> None:
    path = tmp_path / "d.json"
    path.write_text('{"a": 1}\n{"a": 2}\n', encoding="utf-8")
    assert read(pm, path) == [(1, {"a": 1}), (2, {"a": 2})]


def test_broken_json_file_names_its_line(pm, tmp_path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[\n {"a": 1},\n {"a": }\n]', encoding="utf-8")
    with pytest.raises(DataError) as err:
        read(pm, path)
    assert f"{path}:3" in str(err.value) and "not valid JSON" in str(err.value)


def test_json_without_records_says_what_it_holds(pm, tmp_path) -> None:
    path = tmp_path / "d.json"
    path.write_text('"just text"', encoding="utf-8")
    with pytest.raises(DataError, match="must hold an array of records"):
        read(pm, path)


# ----------------------------------------------------------------------------- CSV / TSV

TRICKY_CSV = (
    "instruction,input,output\n"
    '"Split ""a, b"" on commas.","a, b","[""a"", ""b""]"\n'
    '"Write two lines.",,"line one\nline two"\n'
    '把这句话翻译成英文。,你好，世界。,"Hello, world."\n'
    "too,many,fields,here\n"
    "Last,,ok\n"
)


def test_csv_with_quoted_commas_newlines_and_chinese(pm, tmp_path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(TRICKY_CSV, encoding="utf-8")
    rows = read(pm, path)
    good = [(line, r) for line, r in rows if not isinstance(r, RecordError)]
    assert good == [
        (2, {"instruction": 'Split "a, b" on commas.', "input": "a, b", "output": '["a", "b"]'}),
        (3, {"instruction": "Write two lines.", "input": "", "output": "line one\nline two"}),
        (
            5,
            {
                "instruction": "把这句话翻译成英文。",
                "input": "你好，世界。",
                "output": "Hello, world.",
            },
        ),
        (7, {"instruction": "Last", "input": "", "output": "ok"}),
    ]
    # the bad row is reported with its own line, counted after the two-line field
    assert reasons(rows) == {6: "bad_row"}
    bad = next(r for _, r in rows if isinstance(r, RecordError))
    assert "row has 4 fields but the header has 3" in bad.message


def test_csv_row_with_invalid_utf8_is_rejected_with_its_line(pm, tmp_path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbftext\nfine\nbad \xff byte\n\xe4\xb8\xad\n")
    rows = read(pm, path)
    assert rows[0] == (2, {"text": "fine"}) and rows[2] == (4, {"text": "中"})
    assert reasons(rows) == {3: "not_utf8"}


def test_tsv_and_a_configured_delimiter(pm, tmp_path) -> None:
    tsv = tmp_path / "d.tsv"
    tsv.write_text("text\tlabel\na, b\tx\n", encoding="utf-8")
    assert read(pm, tsv) == [(2, {"text": "a, b", "label": "x"})]
    semi = tmp_path / "d.csv"
    semi.write_text("text;label\na, b;x\n", encoding="utf-8")
    assert read(pm, semi, delimiter=";") == [(2, {"text": "a, b", "label": "x"})]


def test_csv_header_must_name_every_column_once(pm, tmp_path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,text\na,b\n", encoding="utf-8")
    with pytest.raises(DataError, match="repeated"):
        read(pm, path)
    empty = tmp_path / "e.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="no header row"):
        read(pm, empty)


# ----------------------------------------------------------------------------- Parquet


def test_parquet_rows_and_nested_conversations(pm, tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    table = pa.table(
        {
            "conversations": [
                [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "Hi"}],
                [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}],
            ],
            "system": [None, "Be brief."],
        }
    )
    pq.write_table(table, path)
    rows = read(pm, path)
    assert [line for line, _ in rows] == [1, 2]
    assert rows[0][1]["conversations"][0] == {"from": "human", "value": "你好"}
    assert rows[1][1]["system"] == "Be brief."


def test_a_file_that_is_not_parquet_is_one_clear_error(pm, tmp_path) -> None:
    path = tmp_path / "d.parquet"
    path.write_text(json.dumps({"a": 1}), encoding="utf-8")
    with pytest.raises(DataError, match="cannot be read as Parquet"):
        read(pm, path)


def test_unknown_suffix_is_served_by_nobody(pm, tmp_path) -> None:
    path = tmp_path / "d.xlsx"
    path.write_bytes(b"")
    assert pm.hook.tunesmith_read_file(path=path, data_cfg=OmegaConf.create({})) is None
    assert {".jsonl", ".json", ".csv", ".tsv", ".parquet"} <= set(pm.names("file"))


def test_csv_quote_never_closed_is_reported_on_the_row_that_opened_it(pm, tmp_path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('a,b\n1,2\n"unclosed,x\n3,4\n', encoding="utf-8")
    rows = read(pm, path)
    assert rows[0] == (2, {"a": "1", "b": "2"})
    assert reasons(rows) == {3: "bad_row"}
    assert "never closed" in rows[1][1].message


def test_every_file_type_is_declared_and_reads_a_file_with_its_suffix(pm, tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from framework import FileType

    samples = {
        ".jsonl": '{"a": "x"}\n',
        ".json": '[{"a": "x"}]',
        ".csv": "a\nx\n",
        ".tsv": "a\nx\n",
    }
    declared = {name: pm.describe("file", name) for name in pm.names("file")}
    assert set(declared) == {*samples, ".parquet"}
    for suffix, info in declared.items():
        assert isinstance(info, FileType) and info.description, suffix
        path = tmp_path / f"d{suffix}"
        if suffix == ".parquet":
            pq.write_table(pa.table({"a": ["x"]}), path)
        else:
            path.write_text(samples[suffix], encoding="utf-8")
        ((line, record),) = read(pm, path)
        assert record == {"a": "x"} and line >= 1, suffix  # CSV: the line after the header
