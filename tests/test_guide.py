"""The fine-tuning guide stays true: every shell command in docs/guide.md and docs/guide.zh.md runs.

Each line of a ```bash block of either guide is a command (``\\`` continues a line, ``#`` starts
a comment). They run in guide order (English first, then any command only the Chinese guide
has; a command both guides show runs once) in one shared directory, as a reader would run them
from the checkout: ``data/`` is linked in, the guide's example files are written there, and
``outputs/`` fills up as it goes, so a command that needs an earlier one's run finds it.

Smoke mapping — what the test changes so that the whole guide runs in a few minutes on a CPU:

* ``python run.py ...`` that trains, evaluates or prepares: any ``model=``/``model.*`` is
  replaced by ``model=tiny`` (a tiny random Llama), and ``SMOKE`` settings are added for
  every key the command does not set itself (60 examples, 3 steps an epoch, 8 new tokens,
  4 test examples), plus ``trainer.max_steps=3`` unless it sets ``trainer.max_steps`` or
  ``trainer.max_epochs`` (so the guide's "raise the budget" command really extends a run).
  ``--help``, ``--cfg`` and ``plugins`` run as they are; ``stages=[chat]`` and
  ``stages=[serve]`` load the run's saved config, so they get no smoke settings.
* Every command runs with ``OMP_NUM_THREADS=1`` (docs/performance.md: on a busy CPU one
  thread per process is several times faster) and without ``TUNESMITH_OUTPUT``.
* ``stages=[chat]`` reads a question and ``/exit`` from stdin.
* ``stages=[serve]`` starts in the background on a free port (``serve.port=``); it must say
  it is serving, and the guide's ``curl`` commands are sent to that port instead of 8000.
* ``make <target>`` runs as ``make -n <target>`` in the checkout: it installs or runs the full
  demo, which takes minutes; the dry run checks that the target and its recipe exist.
* Just before ``python -m framework.evaluate.human_eval import``, the test plays the rater and fills
  the blinded sheet's ``preferred`` column.

Commands in ```text blocks are not run; each must be listed in ``NOT_RUN`` with its reason.
``CHECKS`` hold the guide's claims about a command's result (what the messy file's report
says, that extending a run resumes it...). The ``python run.py`` commands of the sections in
``SLOW_SECTIONS`` are marked slow; the whole file takes about 3 minutes on 2 busy cores, about
2 without them.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from framework.resolvers import ROOT_DIR

GUIDES = {"en": ROOT_DIR / "docs" / "guide.md", "zh": ROOT_DIR / "docs" / "guide.zh.md"}
README = ROOT_DIR / "README.md"

#: Added to every smoke-mapped ``python run.py`` command for each key it does not set itself.
SMOKE = {
    "trainer.precision": "32-true",
    "trainer.enable_progress_bar": "false",
    "trainer.log_every_n_steps": "1",
    "data.max_samples": "60",
    "data.batch_size": "16",
    "evaluator.max_new_tokens": "8",
    "evaluator.max_samples": "4",
}
#: Optimizer steps of a smoke run whose command sets no training budget of its own (a command
#: that raises ``trainer.max_epochs`` extends a run, and runs its epochs).
SMOKE_STEPS = "3"
#: ``python run.py`` arguments that only print something: run as they are.
INFORMATIONAL = {"--help", "--cfg", "plugins"}
#: Stages that load a finished run's saved config: no smoke settings.
SESSION_STAGES = {"stages=[chat]", "stages=[serve]"}

#: Sections whose ``python run.py`` commands are marked slow (still run in CI): independent
#: training runs that no later command uses; the rest of the guide runs in under 3 minutes.
SLOW_SECTIONS = {"method", "faq"}
#: Commands the guides show in ```text blocks instead of running them, with the reason. Each is
#: still composed with ``--cfg job`` when it is a ``python run.py`` command.
NOT_RUN = {
    "python run.py trainer=gpu method=qlora method.quantization.bnb_4bit_compute_dtype=bfloat16": (
        "needs an NVIDIA GPU"
    ),
}
#: How a line of a ```text block is recognised as a command.
COMMAND_START = ("python ", "make ", "pip ", "curl ", "OMP_NUM_THREADS=", "TUNESMITH_")

#: What the chat stage reads from stdin.
CHAT_INPUT = "Extract the contact as JSON.\n\nLi Na is 30 and lives in Wuhan.\n/exit\n"
#: Seconds a command may take before the test gives up on it.
TIMEOUT = 300


# --------------------------------------------------------------------------- reading the guides


def _text(lang: str) -> str:
    return GUIDES[lang].read_text(encoding="utf-8")


def _blocks(text: str, lang: str) -> list[str]:
    """The bodies of the fenced blocks of ``lang`` (``bash``, ``text``...), in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


def _lines(block: str) -> list[str]:
    """A block's logical lines: ``\\`` continuations joined; blank and comment lines left out."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [
        ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]


def _normal(line: str) -> str:
    """One spelling per command: shell words re-quoted, trailing comment dropped."""
    return shlex.join(shlex.split(line, comments=True))


def _check_fences(lang: str) -> None:
    others = set(re.findall(r"^```(\w*)$", _text(lang), flags=re.MULTILINE)) - {"", "bash"}
    shell = others & {"sh", "shell", "console", "zsh"}
    assert not shell, f"{GUIDES[lang].name}: use ```bash for commands (found ```{shell})"


def section_commands(lang: str) -> list[tuple[str, str]]:
    """``(section id, command)`` for every command of a guide's ```bash blocks, in order."""
    _check_fences(lang)
    parts = re.split(r'^<a id="([\w-]+)"></a>\n(?=## )', _text(lang), flags=re.MULTILINE)
    sections = [("", parts[0]), *zip(parts[1::2], parts[2::2], strict=True)]
    return [
        (section, _normal(line))
        for section, text in sections
        for block in _blocks(text, "bash")
        for line in _lines(block)
    ]


def guide_commands(lang: str) -> list[str]:
    """Every command of a guide's ```bash blocks, in order (repeats kept)."""
    return [command for _, command in section_commands(lang)]


def text_commands(lang: str) -> list[str]:
    """Lines of ```text blocks that look like commands (those must be in ``NOT_RUN``)."""
    lines = (ln for block in _blocks(_text(lang), "text") for ln in _lines(block))
    return [_normal(ln) for ln in lines if ln.startswith(COMMAND_START)]


def guide_files(lang: str) -> dict[str, str]:
    """``{name: content}`` of the blocks marked ``<!-- file: name -->``."""
    found = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```\n", _text(lang), flags=re.DOTALL)
    names = [name for name, _ in found]
    assert len(names) == len(set(names)), f"{GUIDES[lang].name} shows a file twice: {names}"
    return dict(found)


def plan() -> list[tuple[str, str]]:
    """``(section, command)`` to run, in order: the English guide's, then the Chinese guide's
    commands that the English one does not have."""
    en = section_commands("en")
    seen = {command for _, command in en}
    return en + [(sec, c) for sec, c in section_commands("zh") if c not in seen]


# --------------------------------------------------------------------------- the smoke mapping


def _key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def smoke_run_py(args: list[str]) -> list[str]:
    """The arguments of ``python run.py`` as the test runs them (see the module docstring)."""
    if INFORMATIONAL & set(args):
        return args
    if SESSION_STAGES & set(args):
        return args
    kept = [a for a in args if _key(a) != "model" and not _key(a).startswith("model.")]
    given = {_key(a) for a in kept}
    smoke = dict(SMOKE)
    if not given & {"trainer.max_steps", "trainer.max_epochs"}:
        smoke["trainer.max_steps"] = SMOKE_STEPS
    return [*kept, "model=tiny", *(f"{k}={v}" for k, v in smoke.items() if k not in given)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Workspace:
    """The directory the guide's commands run in, and what they left running."""

    dir: Path
    env: dict[str, str]
    done: list[str] = field(default_factory=list)
    server: subprocess.Popen | None = None
    port: int = 0
    checks_used: set[str] = field(default_factory=set)

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGINT)
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        self.server = None


def _split_env(words: list[str]) -> tuple[dict[str, str], list[str]]:
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    return env, words


def _start_server(ws: Workspace, argv: list[str], env: dict[str, str]) -> str:
    ws.stop_server()
    ws.port = _free_port()
    with (ws.dir / "serve.log").open("w", encoding="utf-8") as log:
        ws.server = subprocess.Popen(
            [*argv, f"serve.port={ws.port}"],
            cwd=ws.dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    deadline = time.monotonic() + 120
    out = ""
    while time.monotonic() < deadline:
        out = (ws.dir / "serve.log").read_text(encoding="utf-8")
        if f"127.0.0.1:{ws.port}" in out and "serving" in out:
            return out
        assert ws.server.poll() is None, f"the server stopped:\n{out[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"the server did not start within 120 s:\n{out[-3000:]}")


def run_guide_command(ws: Workspace, command: str) -> str:
    """Run one command of the guide (smoke-mapped); return its output; fail on an error."""
    extra_env, words = _split_env(shlex.split(command))
    env = {**ws.env, **extra_env}
    cwd, stdin = ws.dir, None
    program = words[0]
    if program == "make":
        argv, cwd = ["make", "-n", *words[1:]], ROOT_DIR
    elif program == "python" and words[1:2] == ["run.py"]:
        argv = [sys.executable, str(ROOT_DIR / "run.py"), *smoke_run_py(words[2:])]
        if "stages=[serve]" in words:
            return _start_server(ws, argv, env)
        if "stages=[chat]" in words:
            stdin = CHAT_INPUT
    elif program == "python":
        argv = [sys.executable, *words[1:]]
    elif program == "curl":
        assert ws.server is not None, "the guide sends a request before it starts a server"
        argv = [w.replace("127.0.0.1:8000", f"127.0.0.1:{ws.port}") for w in words]
        argv.insert(1, "--silent")
        argv.insert(1, "--show-error")
    else:
        argv = words
    proc = subprocess.run(
        argv, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=TIMEOUT
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, (
        f"`{command}` failed with status {proc.returncode}; it ran as\n  {shlex.join(argv)}\n"
        f"{out[-4000:]}"
    )
    return out


# --------------------------------------------------------------------------- what the guide says


def _run_dir(ws: Workspace, name: str) -> Path:
    return ws.dir / "outputs" / "runs" / name


def _check_messy(ws: Workspace, out: str) -> None:
    """The guide says: 5 loaded, 1 rejected (missing output), 1 duplicate, 1 near-duplicate."""
    report = json.loads((_run_dir(ws, "messy") / "data" / "report.json").read_text())
    assert report["loaded"] == 5
    assert report["rejected"] == {"missing_field": 1}, report["rejected"]
    assert report["cleaning"]["dedup"] == 1
    assert report["cleaning"]["near_dedup"] == 1


def _check_extended(ws: Workspace, out: str) -> None:
    assert "Resumed from" in out, out[-3000:]


def _check_curl(ws: Workspace, out: str) -> None:
    answer = json.loads(out)
    assert answer["model"] == "contacts" and answer["choices"], answer


def _check_merged(ws: Workspace, out: str) -> None:
    for name in ("model.safetensors", "chat_template.jinja", "README.md"):
        assert name in out, out


def _check_human_eval(ws: Workspace, out: str) -> None:
    results = json.loads((_run_dir(ws, "contacts") / "human_eval" / "results.json").read_text())
    assert results["scored"] == results["items"] > 0, results


def _rate_sheet(ws: Workspace) -> None:
    """The rater: prefer answer A on every row of the blinded sheet."""
    sheet = _run_dir(ws, "contacts") / "human_eval" / "sheet.csv"
    with sheet.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, "the exported sheet is empty"
    for row in rows:
        row["preferred"] = "A"
    with sheet.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


#: ``(name, does it apply to this command, check of its output)``: what the guide claims.
CHECKS: list[tuple[str, Callable[[str], bool], Callable[[Workspace, str], None]]] = [
    ("messy data report", lambda c: "data.path=messy.jsonl" in c, _check_messy),
    (
        "extending a finished run resumes",
        lambda c: "hydra.run.dir=outputs/runs/contacts" in c and "trainer.max_epochs=" in c,
        _check_extended,
    ),
    ("the server answers", lambda c: c.startswith("curl "), _check_curl),
    ("the merged folder", lambda c: c.startswith("ls ") and "export/merged" in c, _check_merged),
    ("human evaluation", lambda c: "framework.evaluate.human_eval import" in c, _check_human_eval),
]
#: ``(name, applies to, action)``: done just before a command.
BEFORE: list[tuple[str, Callable[[str], bool], Callable[[Workspace], None]]] = [
    ("rate the sheet", lambda c: "framework.evaluate.human_eval import" in c, _rate_sheet),
]


# --------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("guide")
    (root / "data").symlink_to(ROOT_DIR / "data", target_is_directory=True)
    for lang in GUIDES:
        for name, content in guide_files(lang).items():
            (root / name).write_text(content, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "TUNESMITH_OUTPUT"}
    env["OMP_NUM_THREADS"] = "1"  # docs/performance.md: far faster on a shared CPU
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT_DIR), env.get("PYTHONPATH")]))
    ws = Workspace(dir=root, env=env)
    yield ws
    ws.stop_server()


def _param(number: int, section: str, command: str) -> pytest.ParameterSet:
    words = _split_env(shlex.split(command))[1]
    slow = section in SLOW_SECTIONS and words[:2] == ["python", "run.py"]
    marks = [pytest.mark.slow] if slow else []
    return pytest.param(command, id=f"{number:02d}-{section}", marks=marks)


PLAN = [_param(i, section, command) for i, (section, command) in enumerate(plan())]


@pytest.mark.parametrize("command", PLAN)
def test_guide_command_runs(workspace: Workspace, command: str) -> None:
    for name, applies, action in BEFORE:
        if applies(command):
            action(workspace)
            workspace.checks_used.add(name)
    try:
        out = run_guide_command(workspace, command)
    finally:
        workspace.done.append(command)
    for name, applies, check in CHECKS:
        if applies(command):
            check(workspace, out)
            workspace.checks_used.add(name)
    if command.startswith("curl "):
        workspace.stop_server()


@pytest.mark.slow
def test_every_command_of_both_guides_ran(workspace: Workspace) -> None:
    """Runs after the commands: none was skipped, and every claim above was checked (slow,
    because it needs the slow commands to have run too)."""
    for lang in GUIDES:
        missing = [c for c in guide_commands(lang) if c not in workspace.done]
        assert not missing, f"{GUIDES[lang].name}: commands the test did not run: {missing}"
    names = {name for name, _, _ in CHECKS} | {name for name, _, _ in BEFORE}
    unused = names - workspace.checks_used
    assert not unused, f"checks that matched no command of the guides (update them): {unused}"


def test_both_guides_show_the_same_files() -> None:
    en, zh = guide_files("en"), guide_files("zh")
    assert en, "the guide marks its example files with <!-- file: name --> comments"
    for name in set(en) & set(zh):
        assert en[name] == zh[name], f"{name} differs between the two guides"


def test_commands_kept_out_of_the_test_are_listed_with_a_reason() -> None:
    shown = {c for lang in GUIDES for c in text_commands(lang)}
    unlisted = shown - set(NOT_RUN)
    assert not unlisted, f"commands in ```text blocks that NOT_RUN does not list: {unlisted}"
    gone = set(NOT_RUN) - shown
    assert not gone, f"NOT_RUN lists commands no guide shows: {gone}"


@pytest.mark.parametrize("command", sorted(c for c in NOT_RUN if c.startswith("python run.py")))
def test_commands_not_run_still_compose(command: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT_DIR / "run.py"), *shlex.split(command)[2:], "--cfg", "job"],
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _anchors(lang: str) -> list[str]:
    return re.findall(r'^<a id="([\w-]+)"></a>\n## ', _text(lang), flags=re.MULTILINE)


def test_both_guides_have_the_same_sections_in_the_same_order() -> None:
    for lang in GUIDES:
        headings = re.findall(r"^## ", _text(lang), flags=re.MULTILINE)
        assert len(headings) == len(_anchors(lang)), (
            f"{GUIDES[lang].name}: every '## ' heading needs an <a id> line just above it"
        )
    assert _anchors("en") == _anchors("zh")
    assert len(_anchors("en")) >= 10


def test_both_guides_draw_the_workflow_in_mermaid() -> None:
    for lang in GUIDES:
        assert _blocks(_text(lang), "mermaid"), f"{GUIDES[lang].name} has no ```mermaid block"


def test_the_readme_links_both_guides() -> None:
    readme = README.read_text(encoding="utf-8")
    for path in GUIDES.values():
        assert f"]({path.relative_to(ROOT_DIR).as_posix()})" in readme


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _ids(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    ids = set(re.findall(r'<a id="([\w-]+)"', text))
    ids |= {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}
    return ids


@pytest.mark.parametrize("lang", sorted(GUIDES))
def test_links_in_the_guide_lead_somewhere(lang: str) -> None:
    text = re.sub(r"^```.*?^```$", "", _text(lang), flags=re.DOTALL | re.MULTILINE)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        file = (GUIDES[lang].parent / path).resolve() if path else GUIDES[lang]
        assert file.exists(), f"{GUIDES[lang].name} links to {target}, which does not exist"
        if anchor:
            assert anchor in _ids(file), f"{GUIDES[lang].name} links to a missing anchor {target}"
