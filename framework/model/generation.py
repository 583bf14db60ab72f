"""Generating chat answers: the one place where evaluation, chat and serve decide how a prompt
is rendered, which settings ``model.generate`` gets, which tokens end an answer and where stop
strings cut it.

The evaluate stage generates in batches (:func:`generate`); the ``chat`` and ``serve`` stages
stream one answer at a time (:mod:`framework.serve.engine`). Both go through
:func:`generate_ids` and turn the new tokens into text with :func:`answer_text`, so for the same
model, prompt and greedy settings they give the same answer and stop at the same token.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from framework.data.chat import render
from framework.errors import ConfigError

log = logging.getLogger(__name__)

#: Tokens that end an assistant turn in common chat templates; an answer ends at any of them
#: that the tokenizer has, besides the model's and the tokenizer's eos and the token the
#: tokenizer's own chat template closes a turn with.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


#: Without an explicit ``evaluator.max_new_tokens``, an answer may have ``AUTO_FACTOR`` times
#: the tokens of the longest reference, plus ``AUTO_MARGIN`` (its end of turn, and some
#: slack), at most ``evaluator.max_new_tokens_limit``.
AUTO_FACTOR, AUTO_MARGIN = 1.5, 8

#: ``evaluator.max_new_tokens_limit`` when a config has none.
DEFAULT_LIMIT = 256


# --------------------------------------------------------------------------- prompts


def prompt_text(tokenizer: Any, messages: list[dict]) -> str:
    """The text the model continues: ``messages`` in its chat template plus the answer prompt."""
    return render(tokenizer, messages, add_generation_prompt=True)


def encode_prompts(tokenizer: Any, prompts: list[str], device: Any = None) -> Any:
    """Tokenize rendered prompts (the template has the special tokens already), padded."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc.to(device) if device is not None else enc


def pad_prompts(tokenizer: Any, ids: list[list[int]], device: Any = None) -> Any:
    """Prompts tokenized already (by :func:`prompt_ids`), padded into one batch: the same
    tensors :func:`encode_prompts` makes from their text."""
    enc = tokenizer.pad({"input_ids": ids}, return_tensors="pt", padding=True)
    return enc.to(device) if device is not None else enc


def prompt_ids(tokenizer: Any, prompts: list[str]) -> list[list[int]]:
    """The token ids of each rendered prompt, unpadded (tokenized once per evaluation)."""
    return tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []


def auto_max_new_tokens(tokenizer: Any, references: Sequence[str], limit: int) -> int:
    """Enough new tokens for answers as long as the references: ``AUTO_FACTOR`` x the longest
    reference's tokens + ``AUTO_MARGIN``, at most ``limit`` (``limit`` without references)."""
    if not references:
        return int(limit)
    longest = max(
        len(ids) for ids in tokenizer(list(references), add_special_tokens=False)["input_ids"]
    )
    return max(1, min(int(limit), math.ceil(AUTO_FACTOR * longest) + AUTO_MARGIN))


def resolve_max_new_tokens(ev: Any, tokenizer: Any, references: Sequence[str]) -> int:
    """``evaluator.max_new_tokens`` when given, else :func:`auto_max_new_tokens` from the
    references (``null`` or ``auto`` in the config).

    Raises:
        ConfigError: a value or limit below 1.
    """
    given = ev.get("max_new_tokens")
    if given is not None and str(given) != "auto":
        return _at_least_one(given, "evaluator.max_new_tokens")
    limit = _at_least_one(
        ev.get("max_new_tokens_limit", DEFAULT_LIMIT), "evaluator.max_new_tokens_limit"
    )
    return auto_max_new_tokens(tokenizer, references, limit)


def _at_least_one(value: Any, key: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ConfigError(
            f"{key} must be a whole number of at least 1, got {value!r}.",
            where=key,
            hint="evaluator.max_new_tokens=null sizes answers from the references.",
        )
    return number


# --------------------------------------------------------------------------- end of turn


def template_end_of_turn(tokenizer: Any) -> int | None:
    """The special token the chat template closes an assistant turn with, if it has one.

    Found by rendering a short conversation and reading what follows the answer: ChatML's
    ``<|im_end|>``, Llama 3's ``<|eot_id|>``, Gemma's ``<end_of_turn>``, ``</s>``...
    """
    marker = "TUNESMITH_ANSWER"
    user = {"role": "user", "content": "Hello"}
    try:
        before = render(tokenizer, [user], add_generation_prompt=True)
        full = render(tokenizer, [user, {"role": "assistant", "content": marker}])
    except Exception as exc:  # a template may reject a conversation it does not expect
        log.debug("could not render the chat template to find its end of turn: %s", exc)
        return None
    at = full.find(marker, len(before) if full.startswith(before) else 0)
    if at < 0:
        return None
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    for token_id in tokenizer(full[at + len(marker) :], add_special_tokens=False)["input_ids"]:
        if token_id in special:
            return int(token_id)
        if tokenizer.decode([token_id]).strip():  # text, not a special token, follows the turn
            return None
    return None


def end_of_turn_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids at which an answer ends, for evaluation, chat, serve and the exported model.

    In order, without repeats: the model's ``generation_config.eos_token_id`` (one id or a
    list), the tokenizer's eos, the token the chat template closes an assistant turn with
    (:func:`template_end_of_turn`), and any of :data:`END_OF_TURN_TOKENS` the tokenizer has
    (except its unknown-token placeholder, unless that is also its eos).

    Args:
        model: the causal LM (``None``: no generation config to read).
        tokenizer: its tokenizer, with the chat template answers are prompted with.
    """
    ids: list[Any] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.extend(configured if isinstance(configured, list | tuple) else [configured])
    ids.append(tokenizer.eos_token_id)
    ids.append(template_end_of_turn(tokenizer))
    vocab = tokenizer.get_vocab()
    unk = getattr(tokenizer, "unk_token_id", None)
    known = (vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    ids.extend(i for i in known if i != unk or i == tokenizer.eos_token_id)
    out: list[int] = []
    for i in ids:
        if i is not None and int(i) not in out:
            out.append(int(i))
    return out


# --------------------------------------------------------------------------- settings


@dataclass
class GenerationParams:
    """How to generate an answer; the same fields for evaluation, chat and serve.

    Attributes:
        max_new_tokens: the most tokens the answer may have.
        temperature: sampling temperature; ``0`` means greedy decoding.
        top_p: nucleus sampling share (used when sampling).
        top_k: keep only the ``top_k`` likeliest tokens (used when sampling; ``None``: all).
        repetition_penalty: penalise tokens already generated (``None`` or 1: off).
        min_new_tokens: generate at least this many tokens (end of turn is ignored before).
        stop: strings that end the answer; the answer excludes them.
        seed: seed for sampling, for a reproducible answer.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    repetition_penalty: float | None = None
    min_new_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    @property
    def sampling(self) -> bool:
        """Whether tokens are sampled (``temperature > 0``), not chosen greedily."""
        return bool(self.temperature and self.temperature > 0)

    @classmethod
    def from_evaluator(cls, ev: DictConfig) -> GenerationParams:
        """The settings of the ``evaluator`` group (greedy unless ``evaluator.do_sample``).

        Raises:
            ConfigError: ``max_new_tokens`` below 1, or sampling at a temperature of 0.
        """
        given = ev.get("max_new_tokens", 64)
        if given is None or str(given) == "auto":  # no references here: the limit
            limit = ev.get("max_new_tokens_limit", DEFAULT_LIMIT)
            max_new_tokens = _at_least_one(limit, "evaluator.max_new_tokens_limit")
        else:
            max_new_tokens = _at_least_one(given, "evaluator.max_new_tokens")
        temperature = 0.0
        if ev.get("do_sample", False):
            temperature = float(ev.get("temperature", 1.0))
            if temperature <= 0:
                raise ConfigError(
                    f"evaluator.temperature={temperature} cannot sample.",
                    where="evaluator.temperature",
                    hint="sample at a temperature above 0, or set evaluator.do_sample=false "
                    "for greedy answers.",
                )
        return cls(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=float(ev.get("top_p", 1.0)),
            top_k=None if ev.get("top_k") is None else int(ev.top_k),
            repetition_penalty=(
                None if ev.get("repetition_penalty") is None else float(ev.repetition_penalty)
            ),
            stop=[str(s) for s in (ev.get("stop") or [])],
            seed=None if ev.get("seed") is None else int(ev.seed),
        )

    @classmethod
    def from_serve(cls, serve_cfg: DictConfig) -> GenerationParams:
        """The defaults of the ``serve`` group (``chat`` and ``serve`` stages)."""
        return cls(
            max_new_tokens=int(serve_cfg.get("max_tokens", 256)),
            temperature=float(serve_cfg.get("temperature", 0.7)),
            top_p=float(serve_cfg.get("top_p", 1.0)),
            seed=None if serve_cfg.get("seed") is None else int(serve_cfg.seed),
        )

    def replace(self, **changes: Any) -> GenerationParams:
        """A copy with the given fields changed (``None`` values keep the current one)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def generate_kwargs(self, tokenizer: Any, eot_ids: list[int]) -> dict[str, Any]:
        """Keyword arguments for ``model.generate`` (stop strings are handled apart).

        Greedy decoding clears the sampling defaults a model's ``generation_config`` may carry.
        """
        kwargs: dict[str, Any] = {
            "max_new_tokens": int(self.max_new_tokens),
            "min_new_tokens": min(int(self.min_new_tokens or 0), int(self.max_new_tokens)),
            "eos_token_id": list(eot_ids),
            "pad_token_id": tokenizer.pad_token_id,
        }
        if self.sampling:
            kwargs.update(do_sample=True, temperature=float(self.temperature), top_p=self.top_p)
            if self.top_k is not None:
                kwargs["top_k"] = int(self.top_k)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.repetition_penalty not in (None, 1, 1.0):
            kwargs["repetition_penalty"] = float(self.repetition_penalty)
        return kwargs


# --------------------------------------------------------------------------- answer text


def first_stop(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    """Where the first of ``stops`` begins in ``text`` (searching from ``start``), or ``None``."""
    found = [i for i in (text.find(s, start) for s in stops if s) if i >= 0]
    return min(found) if found else None


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to (not including) the first stop string in it."""
    cut = first_stop(text, stops)
    return text if cut is None else text[:cut]


def decode_answer(tokenizer: Any, ids: Sequence[int], eot_ids: Sequence[int]) -> str:
    """The text of generated token ``ids``, up to (not including) the first end-of-turn token."""
    ids = list(ids)
    end = next((k for k, t in enumerate(ids) if t in eot_ids), len(ids))
    return tokenizer.decode(ids[:end], skip_special_tokens=True)


def finish_text(text: str, stops: Sequence[str]) -> str:
    """An answer as it is returned: cut at the first stop string, without surrounding spaces.

    A byte-level BPE cut by ``max_new_tokens`` can end inside a character; its remains
    (``\\ufffd``) are dropped.
    """
    return cut_at_stop(text, stops).rstrip("\ufffd").strip()


def answer_text(
    tokenizer: Any, ids: Sequence[int], eot_ids: Sequence[int], stops: Sequence[str]
) -> str:
    """The answer the generated token ``ids`` give (:func:`decode_answer`, :func:`finish_text`)."""
    return finish_text(decode_answer(tokenizer, ids, eot_ids), stops)


class StopStrings:
    """A stopping criterion: a sequence is done once its answer text holds a stop string.

    Only the generated tokens are read (a stop string never matches across the prompt), with
    the same decoding as :func:`answer_text`, so generation stops where the text is cut.
    """

    def __init__(
        self, tokenizer: Any, stops: Sequence[str], prompt_length: int, eot_ids: Sequence[int]
    ) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.prompt_length = prompt_length
        self.eot_ids = list(eot_ids)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = [
            first_stop(decode_answer(self.tokenizer, row, self.eot_ids), self.stops) is not None
            for row in input_ids[:, self.prompt_length :].tolist()
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def generate_ids(
    model: Any,
    tokenizer: Any,
    encoded: Any,
    params: GenerationParams,
    eot_ids: list[int],
    *,
    streamer: Any = None,
    criteria: Sequence[Any] = (),
) -> Any:
    """Run ``model.generate`` on encoded prompts; returns the new tokens ``[batch, new]``.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer (pad token; decoding for stop strings).
        encoded: the tokenized prompts (``input_ids``, ``attention_mask``), on the model's device.
        params: the generation settings.
        eot_ids: the tokens that end an answer (:func:`end_of_turn_ids`).
        streamer: receives the new tokens as they come (``put``/``end``; see transformers).
        criteria: more stopping criteria (e.g. a cancel flag).
    """
    import torch

    prompt_length = int(encoded["input_ids"].shape[1])
    stopping = list(criteria)
    if any(params.stop):
        stopping.append(StopStrings(tokenizer, params.stop, prompt_length, eot_ids))
    if params.sampling and params.seed is not None:
        torch.manual_seed(int(params.seed))
    with torch.inference_mode():
        out = model.generate(
            **encoded,
            **params.generate_kwargs(tokenizer, eot_ids),
            stopping_criteria=stopping or None,
            streamer=streamer,
        )
    return out[:, prompt_length:]


# --------------------------------------------------------------------------- greedy loop


def _inner_model(model: Any) -> Any | None:
    """The causal LM whose forward the greedy loop calls, or ``None`` when only
    ``model.generate`` knows how to run it (an encoder-decoder, a PEFT prompt-learning
    adapter that prepends virtual tokens, a model that cannot take a cache)."""
    import inspect

    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return None
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        config = model.peft_config.get(getattr(model, "active_adapter", None) or "default")
        if config is None or getattr(config, "is_prompt_learning", False):
            return None
        model = model.get_base_model()
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    if "position_ids" not in params or not ({"cache", "past_key_values"} & set(params)):
        return None
    return model


def greedy_loop_fits(model: Any, params: GenerationParams, criteria: Sequence[Any] = ()) -> bool:
    """Whether :func:`greedy_ids` gives what ``model.generate`` gives for ``params``: greedy,
    no repetition penalty or minimum length, no extra stopping criteria, a decoder-only
    model whose forward takes a cache and position ids."""
    return (
        not params.sampling
        and params.repetition_penalty in (None, 1, 1.0)
        and not params.min_new_tokens
        and not criteria
        and _inner_model(model) is not None
    )


def greedy_ids(
    model: Any,
    encoded: Any,
    eot_ids: Sequence[int],
    max_new_tokens: int,
    *,
    tokenizer: Any = None,
    stops: Sequence[str] = (),
) -> list[list[int]]:
    """Greedy decoding of a left-padded batch with a KV cache; each row leaves the batch as
    soon as its answer has ended, so the rows still going no longer pay for it.

    The model gets what ``model.generate`` gives it (position ids from the attention mask,
    the 2-D mask growing by one column a step, the last position's logits only, as float32),
    and the next token is the arg-max, so the tokens are those of greedy ``model.generate``.

    Args:
        model: a decoder-only causal LM (see :func:`greedy_loop_fits`).
        encoded: the left-padded prompts (``input_ids``, ``attention_mask``) on its device.
        eot_ids: the tokens that end an answer (kept as its last token).
        max_new_tokens: the most new tokens of a row.
        tokenizer: decodes the answers for ``stops``.
        stops: strings that end an answer (as :class:`StopStrings` does for ``generate``).

    Returns:
        The new tokens of each row, up to and including the one that ended it.
    """
    import inspect

    import torch

    inner = _inner_model(model)
    if inner is None:
        raise ValueError("greedy_ids needs a decoder-only model that takes a cache")
    names = inspect.signature(inner.forward).parameters
    cache_key = "cache" if "cache" in names else "past_key_values"
    extra = {"logits_to_keep": 1} if "logits_to_keep" in names else {}
    ends = torch.tensor(sorted({int(i) for i in eot_ids}), dtype=torch.long)
    stops = [s for s in stops if s]
    input_ids = encoded["input_ids"]
    mask = encoded.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(input_ids)
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    if bool((mask == 1).all()):  # no padding: no mask, as model.generate does
        mask = None
    rows = int(input_ids.shape[0])
    out: list[list[int]] = [[] for _ in range(rows)]
    alive = list(range(rows))  # original row of each row still in the batch
    step_ids, cache = input_ids, None
    with torch.inference_mode():
        for _ in range(int(max_new_tokens)):
            result = inner(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{cache_key: cache},
                **extra,
            )
            cache = result[cache_key]  # the output names it as the forward does
            tokens = result.logits[:, -1].to(dtype=torch.float32).argmax(-1)
            ended = torch.isin(tokens, ends.to(tokens.device)).tolist()
            keep: list[int] = []
            for k, (row, token) in enumerate(zip(alive, tokens.tolist(), strict=True)):
                out[row].append(token)
                done = ended[k] or len(out[row]) >= max_new_tokens
                if not done and stops:
                    text = decode_answer(tokenizer, out[row], eot_ids)
                    done = first_stop(text, stops) is not None
                if not done:
                    keep.append(k)
            if not keep:
                break
            last = positions[:, -1:] + 1
            if len(keep) < len(alive):
                index = torch.tensor(keep, device=tokens.device)
                cache.batch_select_indices(index)
                tokens, last = tokens[index], last[index]
                mask = None if mask is None else mask[index]
                alive = [alive[k] for k in keep]
            step_ids = tokens[:, None]
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            positions = last
    return out


# --------------------------------------------------------------------------- evaluation


def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    params: GenerationParams,
    eot_ids: list[int],
    ids: list[list[int]] | None = None,
    loop: bool = True,
) -> list[str]:
    """Generate one left-padded batch of rendered prompts; returns each prompt's answer.

    Greedy settings go through :func:`greedy_ids` (rows leave the batch at their end of
    turn) when the model allows it (:func:`greedy_loop_fits`), others through
    ``model.generate`` (:func:`generate_ids`); greedy answers are the same either way.

    Args:
        ids: the prompts' tokens when they were tokenized already (:func:`prompt_ids`).
        loop: ``False``: always ``model.generate`` (how evaluation generated before the loop;
            the benchmark compares the two).
    """
    encoded = (
        encode_prompts(tokenizer, prompts, model.device)
        if ids is None
        else pad_prompts(tokenizer, ids, model.device)
    )
    rows = None
    if loop and greedy_loop_fits(model, params):
        try:
            rows = greedy_ids(
                model,
                encoded,
                eot_ids,
                params.max_new_tokens,
                tokenizer=tokenizer,
                stops=params.stop,
            )
        except (AttributeError, NotImplementedError, TypeError) as exc:
            # a model whose cache cannot drop rows (a hybrid or custom cache): same answers
            # through model.generate
            log.warning("greedy loop not usable for this model (%s): using model.generate", exc)
    if rows is None:
        rows = generate_ids(model, tokenizer, encoded, params, eot_ids).tolist()
    return [answer_text(tokenizer, row, eot_ids, params.stop) for row in rows]


def length_order(ids: Sequence[Sequence[int]]) -> list[int]:
    """Prompt indices longest first (by tokens; ties in input order): a batch then holds
    prompts of about one length, so little of it is padding."""
    return sorted(range(len(ids)), key=lambda i: -len(ids[i]))


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    ev: DictConfig,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
    references: Sequence[str] | None = None,
    loop: bool = True,
) -> list[str]:
    """Generate an answer for each rendered prompt, in batches; stop at end of turn.

    Greedy unless ``ev.do_sample``. Each prompt is tokenized once; batches are cut from the
    prompts sorted by their token count, longest first (little padding, and a batch that does
    not fit in memory fails at once, not at the end). Greedy answers leave their batch as
    soon as they end (end-of-turn token or stop string; :func:`greedy_ids`); a sampled batch
    stops when every answer in it has ended.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer (padding is switched to the left while generating).
        prompts: prompts already rendered with :func:`prompt_text`.
        ev: the ``evaluator`` group (``generation_batch_size``, else ``batch_size``;
            ``max_new_tokens``, sampling keys, ``stop``).
        on_batch: called after each batch with the prompt indices and their answers.
        references: the expected answers; with ``ev.max_new_tokens`` null they size the
            answers (:func:`resolve_max_new_tokens`).
        loop: ``False``: generate every batch with ``model.generate`` (see
            :func:`generate_batch`).

    Returns:
        The answers, in the order of ``prompts``.
    """
    model.eval()
    params = GenerationParams.from_evaluator(ev)
    if references is not None:
        params = params.replace(max_new_tokens=resolve_max_new_tokens(ev, tokenizer, references))
    eot_ids = end_of_turn_ids(model, tokenizer)
    batch_size = max(1, int(ev.get("generation_batch_size") or ev.get("batch_size", 16)))
    outputs: list[str | None] = [None] * len(prompts)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        ids = prompt_ids(tokenizer, prompts)
        order = length_order(ids)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = params if params.seed is None else params.replace(seed=params.seed + start)
            texts = generate_batch(
                model,
                tokenizer,
                [prompts[i] for i in idx],
                batch,
                eot_ids,
                [ids[i] for i in idx],
                loop=loop,
            )
            for i, t in zip(idx, texts, strict=True):
                outputs[i] = t
            if on_batch is not None:
                on_batch(idx, texts)
    finally:
        tokenizer.padding_side = old_side
    return [o or "" for o in outputs]
