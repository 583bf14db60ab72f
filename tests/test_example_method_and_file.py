"""A new PEFT method and a new file type drop in from an outside package; the core knows neither.

The example package (examples/plugins/tunesmith-example) adds the method ``loha`` (PEFT's
LoHa) and the file type ``.qa.txt`` with its record shape ``qa``, each in its own module with
its own entry point. They are used the way a user would: pip-installed, then ``python
run.py``. The last tests read framework/'s source: it never decides anything by the name of
a plugin (in-tree or outside), it asks the descriptor the plugin declared.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from framework.descriptors import EXAMPLE_SHAPES, METHOD_KINDS, METRIC_NEEDS
from framework.resolvers import ROOT_DIR
from tests.conftest import EXAMPLE_DIST, TINY, run_cli

FRAMEWORK = ROOT_DIR / "framework"


# --------------------------------------------------------------------------- method=loha


LOAD_ALONE = textwrap.dedent(
    """
    import json, sys

    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = sys.argv[1]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Add the numbers.\\n\\n3 + 4"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"framework", "plugins", "peft"})
    print(json.dumps({"logits": model(**enc).logits[0, -1].tolist(), "modules": loaded}))
    """
)


def test_loha_from_a_package_trains_evaluates_and_exports_adapter_and_merged(
    installed: Path, tmp_path: Path, alpaca_file: Path
) -> None:
    proc = run_cli(
        *TINY,
        "data=alpaca",
        f"data.path={alpaca_file}",
        "method=loha",  # conf/method/loha.yaml of the package
        "optim.lr=1e-2",
        "stages=[prepare,train,evaluate,export]",
        "export.formats=[adapter,merged]",
        env={"TUNESMITH_OUTPUT": str(tmp_path / "out"), "PYTHONPATH": str(installed)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = list((tmp_path / "out" / "runs").iterdir())

    # trained through PEFT: a LoHa adapter, only the adapter's parameters trained
    saved = json.loads((run / "artifact" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LOHA" and saved["r"] == 8
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["method"] == "loha" and 0 < summary["trainable"] < summary["total"] / 10

    # evaluated base against tuned
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["tuned"]["perplexity"] < metrics["base"]["perplexity"]

    # exported: the adapter as PEFT wrote it, and a merged model transformers loads alone
    adapter, merged = run / "export" / "adapter", run / "export" / "merged"
    assert (adapter / "adapter_config.json").is_file()
    assert (merged / "model.safetensors").is_file() and not (
        merged / "adapter_config.json"
    ).exists()
    card = (merged / "README.md").read_text()
    assert "LoHa" in card and "An adapter method" in card  # from the declared Method

    script = tmp_path / "load.py"
    script.write_text(LOAD_ALONE, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    alone = subprocess.run(
        [sys.executable, "-I", str(script), str(merged)],
        cwd=tmp_path,
        env={**env, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert alone.returncode == 0, alone.stderr[-3000:]
    result = json.loads(alone.stdout.strip().splitlines()[-1])
    assert result["modules"] == []  # neither tunesmith nor PEFT was needed

    # ... and answers like the base model with the adapter on top
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    tuned = AutoPeftModelForCausalLM.from_pretrained(adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Add the numbers.\n\n3 + 4"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.inference_mode():
        expected = tuned(**enc).logits[0, -1].float()
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, atol=1e-4, rtol=1e-4)


def test_loha_options_reach_peft_and_a_wrong_one_is_named(on_path: Path, make_cfg) -> None:
    from tunesmith_example import loha

    from framework.errors import ConfigError

    cfg = make_cfg("method=loha", "method.r=4", "method.alpha=16")
    config = loha.loha_config(cfg.method)
    assert type(config).__name__ == "LoHaConfig" and config.r == 4 and config.alpha == 16
    with pytest.raises(ConfigError, match=r"method\.rank"):
        loha.loha_config(make_cfg("method=loha", "+method.rank=4").method)


# --------------------------------------------------------------------------- .qa.txt


def _qa_file(path: Path, good: int) -> tuple[Path, int]:
    """``good`` question/answer blocks with one broken block in the middle (its line)."""
    parts = [f"Q: What is {i} + 1?\nA: {i + 1}" for i in range(good)]
    parts.insert(good // 2, "Q: A question with no answer line\nand a second line")
    text = "\n\n".join(parts) + "\n"
    bad_line = text.splitlines().index("Q: A question with no answer line") + 1
    path.write_text(text, encoding="utf-8")
    return path, bad_line


def test_qa_file_prepares_and_a_bad_block_lands_in_rejects_with_its_line(
    installed: Path, tmp_path: Path
) -> None:
    data, bad_line = _qa_file(tmp_path / "x.qa.txt", good=20)
    proc = run_cli(
        *TINY,
        "data=alpaca",
        f"data.path={data}",
        "data.format=qa",
        "stages=[prepare]",
        env={"TUNESMITH_OUTPUT": str(tmp_path / "out"), "PYTHONPATH": str(installed)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = list((tmp_path / "out" / "runs").iterdir())
    rejects = [
        json.loads(line) for line in (run / "data" / "rejects.jsonl").read_text().splitlines()
    ]
    assert len(rejects) == 1
    assert rejects[0]["source"] == f"{data}:{bad_line}"
    assert rejects[0]["reason"] == "bad_block" and "'A:'" in rejects[0]["message"]

    examples = [
        json.loads(line)
        for split in ("train", "val", "test")
        for line in (run / "data" / f"{split}.jsonl").read_text().splitlines()
    ]
    assert len(examples) == 20
    first = next(e for e in examples if e["_source"] == f"{data}:1")
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    assert first["messages"][0]["content"] == "What is 0 + 1?"
    assert first["messages"][1]["content"] == "1"


def test_qa_reader_keeps_multiline_answers_and_names_each_bad_block(
    on_path: Path, tmp_path: Path
) -> None:
    from tunesmith_example.qa_file import read_qa

    from framework.errors import RecordError

    path = tmp_path / "t.qa.txt"
    path.write_text(
        "Q: Two lines\nof question\nA: and an answer\nover two\n\n\n"
        "A: an answer first\n\nQ: no answer\n\nQ:\nA: empty question\n",
        encoding="utf-8",
    )
    rows = list(read_qa(path))
    assert rows[0] == (
        1,
        {"question": "Two lines\nof question", "answer": "and an answer\nover two"},
    )
    bad = {line: (r.reason, r.field) for line, r in rows[1:] if isinstance(r, RecordError)}
    assert bad == {
        7: ("bad_block", "question"),
        9: ("bad_block", "answer"),
        11: ("empty_field", "question"),
    }


def test_the_package_declares_what_its_new_names_are(installed: Path) -> None:
    proc = run_cli("plugins", "--json", env={"PYTHONPATH": str(installed)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    served = {(s["stage"], n["name"]): n["providers"] for s in data["stages"] for n in s["names"]}
    (loha,) = served[("method", "loha")]
    assert (loha["plugin"], loha["package"]) == ("example_loha", EXAMPLE_DIST)
    assert loha["declared"]["kind"] == "adapter" and loha["description"]
    (qa_file,) = served[("file", ".qa.txt")]
    assert (qa_file["plugin"], qa_file["package"]) == ("example_qa", EXAMPLE_DIST)
    assert served[("format", "qa")][0]["declared"]["produces"] == "chat"
    (conf,) = data["config_packages"]
    assert "method/loha" in conf["options"]


# --------------------------------------------------------------------------- framework/


def _framework_files() -> list[Path]:
    return sorted(FRAMEWORK.rglob("*.py"))


def _docstrings(tree: ast.AST) -> set[int]:
    """``id()`` of every docstring node (module, class and function docstrings)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _code_words(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string literal (docstrings left out) and identifier of a module, with its line."""
    docs = _docstrings(tree)
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            out.append((node.lineno, node.value))
        elif isinstance(node, ast.Name):
            out.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            out.append((node.lineno, node.attr))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.append((node.lineno, node.name))
        elif isinstance(node, ast.arg):
            out.append((node.lineno, node.arg))
        elif isinstance(node, ast.alias):
            out.append((node.lineno, node.asname or node.name))
    return out


#: What the example package serves (and its modules' names), as patterns on code words.
EXAMPLE_NAMES = {
    "loha": r"\bloha\b",
    ".qa.txt": r"\.?\bqa\.txt\b",
    ".qa / qa": r"(?<![\w])\.?qa\b",
    "wer": r"\bwer\b",
    "token_f1": r"\btoken_f1\b",
    "last_layers": r"\blast_layers\b",
    "sft_label_smoothing": r"\bsft_label_smoothing\b",
    "pairwise_dpo": r"\bpairwise_dpo\b",
}


@pytest.mark.parametrize("name", sorted(EXAMPLE_NAMES))
def test_framework_code_never_names_the_example_package(name: str) -> None:
    """Docstrings and comments may show a plugin as an example; code may not know one."""
    pattern = re.compile(EXAMPLE_NAMES[name], re.IGNORECASE)
    hits = [
        f"{path.relative_to(ROOT_DIR)}:{line}: {word!r}"
        for path in _framework_files()
        for line, word in _code_words(ast.parse(path.read_text(encoding="utf-8")))
        if pattern.search(word)
    ]
    assert not hits, f"framework/ code names the outside plugin '{name}':\n" + "\n".join(hits)


def test_example_names_cover_what_the_package_serves(on_path: Path) -> None:
    from framework.manager import build_plugin_manager

    pm = build_plugin_manager()
    outside = {
        name
        for table in pm.served.values()
        for name, providers in table.items()
        if any(p.package == EXAMPLE_DIST for p in providers)
    }
    patterns = [re.compile(p, re.IGNORECASE) for p in EXAMPLE_NAMES.values()]
    assert outside and all(any(p.search(n) for p in patterns) for n in outside), outside


#: Words of tunesmith's own vocabulary that the descriptors declare (method kinds, example
#: shapes, what a metric needs): a table over them, or a comparison with a descriptor's
#: field (``info.kind == "full"``), asks the declaration, whatever plugin is named alike.
VOCABULARY = set(METHOD_KINDS) | set(EXAMPLE_SHAPES) | set(METRIC_NEEDS)
DESCRIPTOR_FIELDS = {"kind", "produces", "example", "needs", "key"}
#: Literals equal to a served name that are something else, with why.
NOT_NAMES = {
    ("framework/data/prepare.py", "text"): "the key of a text example ({'text': ...})",
    ("framework/evaluate/human_eval.py", "text"): "a column of ratings.csv: the answer's text",
    ("framework/train/stage.py", "accuracy"): "the panel of logged rewards/*accuracy series",
}
#: The stage keys whose names framework/ must never decide on.
NAMED_KEYS = ("method", "metric", "format", "export", "objective", "model")


def _strings(node: ast.AST) -> list[ast.Constant]:
    """String constants of ``node`` when it is one, or a tuple/list/set of them."""
    if isinstance(node, ast.Call) and len(node.args) == 1:  # frozenset({...}), set((...))
        node = node.args[0]
    items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
    return [i for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)]


def _decisions(tree: ast.Module) -> list[ast.Constant]:
    """String literals used to decide: compared with something, keys of a table, entries of
    an upper-case module or class constant, or ``case`` patterns."""
    out: list[ast.Constant] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Attribute) and o.attr in DESCRIPTOR_FIELDS for o in operands):
                continue  # asks a declared field
            for operand in operands:
                out += _strings(operand)
        elif isinstance(node, ast.Dict):
            keys = [k for k in node.keys if k is not None]
            consts = [k for k in keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
            if consts and {k.value for k in consts} <= VOCABULARY:
                continue  # a table over declared kinds or shapes
            out += consts
        elif isinstance(node, ast.MatchValue):
            out += _strings(node.value)
        elif isinstance(node, ast.Module | ast.ClassDef):
            for stmt in node.body:
                targets = (
                    stmt.targets
                    if isinstance(stmt, ast.Assign)
                    else [stmt.target]
                    if isinstance(stmt, ast.AnnAssign)
                    else []
                )
                upper = any(isinstance(t, ast.Name) and t.id.isupper() for t in targets)
                if upper and stmt.value is not None:
                    consts = _strings(stmt.value)
                    if consts and {c.value for c in consts} <= VOCABULARY:
                        continue  # a set of declared kinds or shapes
                    out += consts
    return out


@pytest.mark.parametrize("key", NAMED_KEYS)
def test_framework_never_decides_by_the_name_of_a_plugin(key: str) -> None:
    """No comparison with, table of, or list of the names plugins serve for ``key``: the core
    asks the plugin's descriptor instead (docstrings and messages may name plugins)."""
    from framework.manager import build_plugin_manager

    names = set(build_plugin_manager(entry_points=False).names(key))
    assert names
    hits = []
    for path in _framework_files():
        rel = str(path.relative_to(ROOT_DIR))
        if rel == "framework/descriptors.py":  # defines the vocabulary (kinds, shapes)
            continue
        for const in _decisions(ast.parse(path.read_text(encoding="utf-8"))):
            if const.value in names and (rel, const.value) not in NOT_NAMES:
                hits.append(f"{rel}:{const.lineno}: {const.value!r}")
    assert not hits, (
        f"framework/ decides by the name of a {key} plugin (ask its descriptor instead, or "
        "move the code into the plugin):\n" + "\n".join(sorted(set(hits)))
    )
