"""Evaluation generates no more than it needs: answers sized from the references unless the
user sets ``evaluator.max_new_tokens``, prompts tokenized once and batched by token length,
each greedy answer leaving its batch at its end of turn, with the same greedy answers as
``model.generate`` one prompt at a time."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from framework.errors import ConfigError
from framework.evaluate.context import EvalContext
from framework.manager import build_plugin_manager
from framework.model import generation
from framework.model.generation import (
    AUTO_FACTOR,
    AUTO_MARGIN,
    GenerationParams,
    end_of_turn_ids,
    generate,
    greedy_ids,
    greedy_loop_fits,
    pad_prompts,
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


def test_evaluation_answers_stay_within_the_auto_size(
    tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
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
    real = generation.greedy_ids

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "greedy_ids", recording)
    ctx = EvalContext(model, tok, examples, OmegaConf.create({"evaluator": ev}))
    ctx.generations()
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


# --------------------------------------------------------------------------- the greedy loop


@pytest.fixture(scope="module")
def ending(tiny: tuple[Any, Any]) -> tuple[Any, Any]:
    """The shaken tiny model with its end-of-turn token made likelier (its output row
    raised), so that some greedy answers end after a few tokens and others run long."""
    import copy

    import torch

    model, tok = tiny
    model = copy.deepcopy(model)
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        head[tok.eos_token_id] = 0.3 * torch.randn(
            head.shape[1], generator=torch.Generator().manual_seed(1)
        )
    return model.eval(), tok


def _hf_rows(model: Any, tok: Any, encoded: Any, eot: list[int], limit: int) -> list[list[int]]:
    """Greedy ``model.generate``'s new tokens, each row up to its first end of turn."""
    import torch

    with torch.inference_mode():
        out = model.generate(
            **encoded,
            max_new_tokens=limit,
            do_sample=False,
            eos_token_id=eot,
            pad_token_id=tok.pad_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )
    rows = out[:, encoded["input_ids"].shape[1] :].tolist()
    return [r[: next((k + 1 for k, t in enumerate(r) if t in eot), len(r))] for r in rows]


def test_the_greedy_loop_gives_the_tokens_of_model_generate(ending: tuple[Any, Any]) -> None:
    """Prompts of different lengths in one left-padded batch, some answers ending early:
    every row's tokens are greedy ``model.generate``'s, up to and including its end of turn."""
    model, tok = ending
    eot = end_of_turn_ids(model, tok)
    tok.padding_side = "left"
    try:
        encoded = pad_prompts(tok, prompt_ids(tok, _prompts(tok)))
    finally:
        tok.padding_side = "right"
    assert len(set(encoded["attention_mask"].sum(-1).tolist())) > 3  # lengths differ
    ours = greedy_ids(model, encoded, eot, 24)
    assert ours == _hf_rows(model, tok, encoded, eot, 24)
    ended = [r for r in ours if r[-1] in eot]
    assert ended and len(ended) < len(ours)  # some rows end early, others run to the limit
    assert all(t not in eot for r in ours for t in r[:-1])  # nothing after an end of turn
    assert {len(r) for r in ours if r[-1] not in eot} == {24}


def test_rows_leave_the_batch_when_their_answer_ends(ending: tuple[Any, Any]) -> None:
    """Each forward pass computes only the rows still answering."""
    model, tok = ending
    eot = end_of_turn_ids(model, tok)
    sizes: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    tok.padding_side = "left"
    try:
        encoded = pad_prompts(tok, prompt_ids(tok, _prompts(tok)))
        rows = greedy_ids(model, encoded, eot, 24)
    finally:
        tok.padding_side = "right"
        hook.remove()
    assert sizes[0] == len(rows)
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]
    # step k computes the rows whose answers have more than k tokens
    assert sizes == [sum(len(r) > k for r in rows) for k in range(len(sizes))]


@pytest.mark.parametrize("stop", [[], ["e"], ["\n", "a"]])
def test_evaluation_answers_equal_model_generate_answers(
    ending: tuple[Any, Any], stop: list[str]
) -> None:
    """Batched evaluation through the loop gives the answers of ``model.generate`` over the
    same batches (``loop=False``, how evaluation generated before), stop strings included."""
    model, tok = ending
    ev = OmegaConf.create({"max_new_tokens": 20, "do_sample": False, "batch_size": 3, "stop": stop})
    looped = generate(model, tok, _prompts(tok), ev)
    plain = generate(model, tok, _prompts(tok), ev, loop=False)
    assert looped == plain
    assert len(set(looped)) > 2


def test_only_plain_greedy_settings_take_the_loop(ending: tuple[Any, Any]) -> None:
    """Sampling, a repetition penalty or a minimum length go through ``model.generate``,
    whose logits processors implement them."""
    model, _ = ending
    greedy = GenerationParams(max_new_tokens=8)
    assert greedy_loop_fits(model, greedy)
    assert greedy_loop_fits(model, greedy.replace(stop=["\n"]))
    assert not greedy_loop_fits(model, greedy.replace(temperature=0.7))
    assert not greedy_loop_fits(model, greedy.replace(repetition_penalty=1.2))
    assert not greedy_loop_fits(model, greedy.replace(min_new_tokens=2))
    assert not greedy_loop_fits(model, greedy, criteria=[lambda *a, **k: False])


def test_an_adapter_model_takes_the_loop_with_the_adapter_on_and_off(
    ending: tuple[Any, Any],
) -> None:
    """A LoRA model (tuned side) and the same model with its adapter disabled (base side)
    answer through the loop as through ``model.generate``."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    model, tok = ending
    peft = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    )
    with torch.no_grad():
        for name, weight in peft.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    peft.eval()
    ev = OmegaConf.create({"max_new_tokens": 16, "do_sample": False, "batch_size": 4, "stop": []})
    prompts = _prompts(tok)
    assert greedy_loop_fits(peft, GenerationParams())
    tuned = generate(peft, tok, prompts, ev)
    assert tuned == generate(peft, tok, prompts, ev, loop=False)
    with peft.disable_adapter():
        base = generate(peft, tok, prompts, ev)
        assert base == generate(peft, tok, prompts, ev, loop=False)
    assert base == generate(model, tok, prompts, ev)
    assert tuned != base


def test_a_cache_that_cannot_drop_rows_falls_back_to_model_generate(
    ending: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model whose cache has no way to drop finished rows still gets its answers (the
    same ones), through ``model.generate``, with a warning instead of a crash."""
    from framework.model import generation

    model, tok = ending
    ev = OmegaConf.create({"max_new_tokens": 20, "do_sample": False, "batch_size": 3, "stop": []})
    expected = generate(model, tok, _prompts(tok), ev)

    def no_row_dropping(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("this cache cannot select rows")

    monkeypatch.setattr(generation, "greedy_ids", no_row_dropping)
    assert generate(model, tok, _prompts(tok), ev) == expected
