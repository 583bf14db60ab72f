"""One generation path: evaluation, chat and serve render the same prompt, stop at the same
end-of-turn token and cut at stop strings the same way, so a chat answer is the answer the
evaluate stage scored."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from framework.evaluate.context import EvalContext
from framework.model.generation import (
    GenerationParams,
    StopStrings,
    answer_text,
    cut_at_stop,
    end_of_turn_ids,
    finish_text,
    first_stop,
    generate,
    prompt_text,
    template_end_of_turn,
)
from framework.serve.engine import ChatEngine
from plugins.models.tiny import build_tokenizer

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]

#: A ChatML template whose turns end with a token that is not the tokenizer's eos.
TURN_END_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|turn_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chatml_tokenizer() -> Any:
    """The tiny model's tokenizer: ChatML, eos ``<|im_end|>`` (the template's end of turn)."""
    return build_tokenizer(300)


def turn_end_tokenizer() -> Any:
    """eos ``<|endoftext|>``; the template ends turns with ``<|turn_end|>``, a token no list
    of known end-of-turn tokens has."""
    tok = build_tokenizer(300)
    tok.add_special_tokens(
        {"eos_token": "<|endoftext|>", "additional_special_tokens": ["<|turn_end|>"]}
    )
    tok.chat_template = TURN_END_TEMPLATE
    return tok


TOKENIZERS = {
    "template ends turns with eos": (chatml_tokenizer, "<|im_end|>"),
    "template ends turns with another token": (turn_end_tokenizer, "<|turn_end|>"),
}


def ids_of(tok: Any, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def chain_model(tok: Any, chain: list[int]) -> Any:
    """A Llama whose next token depends only on the current one: each id of ``chain`` is
    followed by the next, greedily. Attention and MLP write nothing (the residual stream is
    the token's embedding, one-hot) and the head maps each token to its successor."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = len(tok)
    hidden = -(-vocab // 64) * 64
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
    )
    model = LlamaForCausalLM(config)
    head = torch.zeros(vocab, hidden)
    for current, following in zip(chain, chain[1:], strict=False):
        head[following, current] = 1.0
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(vocab, hidden))
        model.lm_head.weight.copy_(head)
    return model.eval()


def recording(model: Any, monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Record the new tokens of every ``model.generate`` call (chat, serve) and every greedy
    loop (evaluation), one prompt per call."""
    from framework.model import generation

    seen: list[list[int]] = []
    real = model.generate
    real_loop = generation.greedy_ids

    def generate_and_record(**kwargs: Any) -> Any:
        out = real(**kwargs)
        seen.append(out[0, kwargs["input_ids"].shape[1] :].tolist())
        return out

    def loop_and_record(*args: Any, **kwargs: Any) -> list[list[int]]:
        rows = real_loop(*args, **kwargs)
        seen.append(rows[0])
        return rows

    model.generate = generate_and_record
    monkeypatch.setattr(generation, "greedy_ids", loop_and_record)
    return seen


def evaluated(model: Any, tok: Any, messages: list[dict], **evaluator: Any) -> str:
    """The answer the evaluate stage generates (and scores) for ``messages``."""
    ev = {"max_new_tokens": 12, "do_sample": False, "batch_size": 4, "stop": [], **evaluator}
    example = {"messages": [*messages, {"role": "assistant", "content": "Paris"}]}
    ctx = EvalContext(model, tok, [example], OmegaConf.create({"evaluator": ev}))
    return ctx.generations()[0]


def chatted(model: Any, tok: Any, messages: list[dict], **params: Any) -> tuple[Any, str]:
    """The chat/serve answer, whole (``complete``) and streamed piece by piece."""
    engine = ChatEngine(model, tok, "chain", GenerationParams(**{"max_new_tokens": 12, **params}))
    whole = engine.complete(messages)
    streamed = "".join(engine.stream(messages))
    return whole, streamed


@pytest.fixture(params=list(TOKENIZERS))
def chain(request: pytest.FixtureRequest) -> tuple[Any, Any, int]:
    """(tokenizer, model, end-of-turn id): the model answers "Paris is big", then the end of
    turn, then "Rome" (which an answer that missed the end of turn would show)."""
    make, end = TOKENIZERS[request.param]
    tok = make()
    eot = tok.convert_tokens_to_ids(end)
    start = ids_of(tok, prompt_text(tok, QUESTION))[-1]
    ids = [start, *ids_of(tok, "Paris is big"), eot, *ids_of(tok, "Rome")]
    assert len(set(ids)) == len(ids), "a chain must not repeat a token"
    return tok, chain_model(tok, ids), eot


def test_evaluation_and_chat_give_the_same_answer_and_stop_at_the_same_token(
    chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok, model, eot = chain
    seen = recording(model, monkeypatch)
    answer = evaluated(model, tok, QUESTION)
    whole, streamed = chatted(model, tok, QUESTION)
    assert answer == whole.text == streamed == "Paris is big"
    assert len(seen) == 3 and all(ids == seen[0] for ids in seen)
    assert seen[0][-1] == eot  # all three stopped at the template's end of turn
    assert whole.finish_reason == "stop" and whole.completion_tokens == len(seen[0])
    # the chat shows the answer as it comes, not all at once at the end
    pieces = list(ChatEngine(model, tok, "chain", GenerationParams()).stream(QUESTION))
    assert len(pieces) > 2 and "".join(pieces) == answer


def test_the_end_of_turn_rule_reads_the_template_when_it_does_not_end_with_eos() -> None:
    tok = turn_end_tokenizer()
    turn_end = tok.convert_tokens_to_ids("<|turn_end|>")
    assert turn_end != tok.eos_token_id
    assert template_end_of_turn(tok) == turn_end
    ids = end_of_turn_ids(None, tok)
    assert tok.eos_token_id in ids and turn_end in ids


def test_end_of_turn_ids_unite_generation_config_eos_template_and_known_tokens() -> None:
    tok = chatml_tokenizer()
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    # <|endoftext|> is this tokenizer's unknown-token placeholder: not an end of turn
    assert end_of_turn_ids(None, tok) == [im_end]

    class Model:
        generation_config = type("Config", (), {"eos_token_id": [7, im_end]})()

    assert end_of_turn_ids(Model(), tok) == [7, im_end]


@pytest.mark.parametrize(
    "stop,expected", [(["is"], "Par"), (["s b", "big"], "Paris i"), (["big", "Paris"], "")]
)
def test_stop_strings_cut_evaluation_and_chat_the_same(
    chain, stop: list[str], expected, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok, model, eot = chain
    seen = recording(model, monkeypatch)
    answer = evaluated(model, tok, QUESTION, stop=stop)
    whole, streamed = chatted(model, tok, QUESTION, stop=stop)
    assert answer == whole.text == streamed == expected
    # generation stopped at the stop string, in both paths, before the end of turn
    assert len(seen) == 3 and all(ids == seen[0] for ids in seen) and eot not in seen[0]
    assert whole.finish_reason == "stop"


def test_a_stop_string_never_matches_across_the_prompt() -> None:
    """The prompt ends with a newline; a stop of two newlines must not end an answer that
    starts with one (only the answer's text is searched)."""
    tok = chatml_tokenizer()
    prompt = ids_of(tok, prompt_text(tok, QUESTION))
    assert tok.decode(prompt[-1:]).endswith("\n")
    stops = StopStrings(tok, ["\n\n"], len(prompt), [tok.eos_token_id])
    going = torch.tensor([prompt + ids_of(tok, "\nParis")])
    done = torch.tensor([prompt + ids_of(tok, "\nParis\n\nRome")])
    assert stops(torch.cat([going, done[:, : going.shape[1]]]), None).tolist() == [False, False]
    assert stops(done, None).tolist() == [True]
    assert answer_text(tok, done[0, len(prompt) :].tolist(), [], ["\n\n"]) == "Paris"


def test_an_answer_cut_by_the_length_limit_is_the_same_in_both_paths(chain) -> None:
    tok, model, _ = chain
    answer = evaluated(model, tok, QUESTION, max_new_tokens=2)
    whole, streamed = chatted(model, tok, QUESTION, max_new_tokens=2)
    assert answer == whole.text == streamed == tok.decode(ids_of(tok, "Paris is big")[:2]).strip()
    assert whole.finish_reason == "length"


def test_a_random_model_answers_the_same_in_evaluation_and_chat() -> None:
    """Whatever a model says (here: random weights, odd bytes and spaces included), greedy
    evaluation and chat agree on every prompt."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = chatml_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    conversations = [
        QUESTION,
        [{"role": "user", "content": "你好，世界。请回答问题。"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "3 + 4"}],
    ]
    ev = OmegaConf.create({"max_new_tokens": 16, "do_sample": False, "batch_size": 1})
    prompts = [prompt_text(tok, c) for c in conversations]
    answers = generate(model, tok, prompts, ev)
    engine = ChatEngine(model, tok, "random", GenerationParams(max_new_tokens=16))
    for conversation, answer in zip(conversations, answers, strict=True):
        assert engine.complete(conversation).text == answer
        assert "".join(engine.stream(conversation)) == answer


def test_settings_come_from_the_evaluator_and_serve_groups_alike() -> None:
    greedy = GenerationParams.from_evaluator(OmegaConf.create({"max_new_tokens": 8}))
    assert not greedy.sampling
    kwargs = greedy.generate_kwargs(chatml_tokenizer(), [2])
    assert kwargs["do_sample"] is False and kwargs["temperature"] is None
    assert kwargs["eos_token_id"] == [2] and kwargs["max_new_tokens"] == 8
    sampled = GenerationParams.from_evaluator(
        OmegaConf.create({"do_sample": True, "temperature": 0.5, "top_k": 5, "seed": 3})
    )
    assert sampled.sampling and sampled.top_k == 5 and sampled.seed == 3
    served = GenerationParams.from_serve(OmegaConf.create({"temperature": 0, "max_tokens": 9}))
    assert not served.sampling and served.max_new_tokens == 9
    assert served.replace(temperature=None, stop=["x"]).stop == ["x"]


@pytest.mark.parametrize(
    "settings,where",
    [
        ({"max_new_tokens": 0}, "evaluator.max_new_tokens"),
        ({"do_sample": True, "temperature": 0}, "evaluator.temperature"),
    ],
)
def test_impossible_evaluator_settings_are_config_errors(settings: dict, where: str) -> None:
    from framework.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        GenerationParams.from_evaluator(OmegaConf.create(settings))
    assert err.value.where == where


def test_stop_string_helpers() -> None:
    assert first_stop("a END b STOP", ["STOP", "END"]) == 2
    assert first_stop("abc", ["x", ""]) is None
    assert cut_at_stop("42 END more", ["END"]) == "42 "
    assert finish_text("  42 END more", ["END"]) == "42"
    assert finish_text("caf\ufffd", []) == "caf"
