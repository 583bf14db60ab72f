"""Evaluation generates no more than it needs: answers sized from the references unless the
user sets ``evaluator.max_new_tokens``, prompts tokenized once and batched by token length,
with the same greedy answers as one prompt at a time."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from framework.errors import ConfigError
from framework.evaluate.context import EvalContext
from framework.manager import build_plugin_manager
from framework.model.generation import (
    AUTO_FACTOR,
    AUTO_MARGIN,
    GenerationParams,
    generate,
    prompt_ids,
    prompt_text,
    resolve_max_new_tokens,
)
from framework.run import Run
from tests.conftest import compose_config

REFERENCES = ["Paris", "The answer is forty-two, as everybody knows.", "ok"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """The tiny random Llama, its weights shaken (seeded) so that its greedy answers vary
    from prompt to prompt and run to the limit, and its tokenizer."""
    import torch

    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    cfg = compose_config(["model=tiny"], run_dir=run_dir)
    run = Run(cfg=cfg, dir=run_dir, plugins=build_plugin_manager(entry_points=False))
    model, tok = run.ensure_model()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(torch.randn(weight.shape, generator=generator) * 0.2)
    return model, tok


def _tokens(tok: Any, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_explicit_max_new_tokens_wins(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    ev = OmegaConf.create({"max_new_tokens": 5, "max_new_tokens_limit": 100})
    assert resolve_max_new_tokens(ev, tok, REFERENCES) == 5
    assert GenerationParams.from_evaluator(ev).max_new_tokens == 5


def test_auto_max_new_tokens_covers_the_longest_reference(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    longest = max(_tokens(tok, r) for r in REFERENCES)
    for value in (None, "auto"):
        ev = OmegaConf.create({"max_new_tokens": value, "max_new_tokens_limit": 1000})
        n = resolve_max_new_tokens(ev, tok, REFERENCES)
        assert n == math.ceil(AUTO_FACTOR * longest) + AUTO_MARGIN
        assert n > longest  # room for the whole reference and its end-of-turn token
    capped = OmegaConf.create({"max_new_tokens": None, "max_new_tokens_limit": 7})
    assert resolve_max_new_tokens(capped, tok, REFERENCES) == 7
    # no references to size from (e.g. chat-like use of generate): the limit
    assert GenerationParams.from_evaluator(capped).max_new_tokens == 7
    with pytest.raises(ConfigError, match="max_new_tokens_limit"):
        resolve_max_new_tokens(OmegaConf.create({"max_new_tokens_limit": 0}), tok, REFERENCES)


def test_default_evaluator_sizes_answers_from_the_references() -> None:
    ev = compose_config([]).evaluator
    assert ev.max_new_tokens is None and ev.max_new_tokens_limit >= 64


def test_evaluation_answers_stay_within_the_auto_size(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    examples = [
        {
            "messages": [
                {"role": "user", "content": f"Question {i}?"},
                {"role": "assistant", "content": r},
            ]
        }
        for i, r in enumerate(REFERENCES)
    ]
    ev = {"max_new_tokens": None, "max_new_tokens_limit": 200, "batch_size": 2, "stop": []}
    seen: list[int] = []
    real = model.generate

    def recording(**kwargs: Any) -> Any:
        seen.append(kwargs["max_new_tokens"])
        return real(**kwargs)

    model.generate = recording
    try:
        ctx = EvalContext(model, tok, examples, OmegaConf.create({"evaluator": ev}))
        ctx.generations()
    finally:
        del model.generate
    longest = max(_tokens(tok, r) for r in REFERENCES)
    assert seen and set(seen) == {math.ceil(AUTO_FACTOR * longest) + AUTO_MARGIN}
    assert ctx.max_new_tokens() == seen[0]


def _prompts(tok: Any) -> list[str]:
    questions = [
        "Hi?",
        "What is the capital of France, and why is it that one?",
        "Name a colour.",
        "Tell me a long story about a river, a mountain and a copper lantern at night.",
        "2+2?",
        "Which is larger: the moon or a quiet meadow full of violet flowers?",
        "Say yes.",
    ]
    return [prompt_text(tok, [{"role": "user", "content": q}]) for q in questions]


def test_length_batches_give_the_answers_of_one_prompt_at_a_time(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    prompts = _prompts(tok)
    base = {"max_new_tokens": 12, "do_sample": False, "stop": []}
    batches: list[list[int]] = []
    batched = generate(
        model,
        tok,
        prompts,
        OmegaConf.create({**base, "batch_size": 3}),
        on_batch=lambda idx, _: batches.append(idx),
    )
    alone = generate(model, tok, prompts, OmegaConf.create({**base, "batch_size": 1}))
    assert batched == alone
    assert len({a for a in batched if a}) >= 3  # real, different answers
    # batches are cut from the prompts sorted by token count, longest first
    lengths = [len(ids) for ids in prompt_ids(tok, prompts)]
    flat = [i for idx in batches for i in idx]
    assert sorted(flat) == list(range(len(prompts)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)


def test_batches_pad_the_prompts_as_tokenizing_their_text_does(tiny: tuple[Any, Any]) -> None:
    from framework.model.generation import encode_prompts, pad_prompts

    _, tok = tiny
    prompts = _prompts(tok)
    tok.padding_side = "left"
    try:
        direct = encode_prompts(tok, prompts)
        padded = pad_prompts(tok, prompt_ids(tok, prompts))
    finally:
        tok.padding_side = "right"
    for key in ("input_ids", "attention_mask"):
        assert padded[key].tolist() == direct[key].tolist()


def test_max_new_tokens_in_the_report_names_the_size_used(tmp_path: Path) -> None:
    from framework.evaluate.report import write_report

    cfg = compose_config([])
    path = tmp_path / "eval_report.md"
    write_report(path, {"tuned": {}, "directions": {}}, [], cfg, info={"max_new_tokens": 53})
    assert "at most 53 new tokens (sized from the references)" in path.read_text("utf-8")
