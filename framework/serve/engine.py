"""Load a tuned model for inference and generate chat answers, streamed or whole.

Shared by the terminal chat (:mod:`framework.serve.chat_cli`) and the HTTP server
(:mod:`framework.serve.http`). What to load is ``serve.model``:

* ``null``: the run in the current run directory (``hydra.run.dir=<finished run>``), or the
  model a previous stage of this same command trained;
* a run directory (it has ``config.yaml`` and ``artifact/``);
* an adapter folder (``export/adapter`` or a run's ``artifact/``): the base model is rebuilt
  from the run's saved config, then the adapter is loaded on top;
* any Hugging Face model folder (``export/merged``, or a folder ``save_pretrained`` wrote).

Generation runs in a worker thread and is serialised by one lock per model, so one process
can take many requests: they wait their turn instead of running the model concurrently. How
a prompt is rendered, the ``generate`` settings, the tokens that end an answer and where stop
strings cut it come from :mod:`framework.model.generation`, as for the evaluate stage.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from framework.data.chat import ensure_chat_template
from framework.errors import ConfigError, ModelError, TunesmithError
from framework.model.generation import (
    GenerationParams,
    answer_text,
    decode_answer,
    encode_prompts,
    end_of_turn_ids,
    first_stop,
    generate_ids,
    prompt_text,
)
from framework.run import Run

log = logging.getLogger(__name__)

#: The tunesmith config written next to every export (the resolved config of the run).
EXPORT_CONFIG = "tunesmith_config.yaml"


class PromptTooLongError(TunesmithError):
    """The conversation does not fit in the model's context window."""


# --------------------------------------------------------------------------- loading


def is_quantized(model: Any) -> bool:
    """Whether ``model`` holds quantized weights (bitsandbytes 4/8-bit, GPTQ, AWQ...)."""
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        return True
    if getattr(model, "hf_quantizer", None) is not None:
        return True
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "quantization_config", None):
        return True
    return any(type(m).__name__ in {"Linear4bit", "Linear8bitLt"} for m in model.modules())


def saved_config(path: Path) -> DictConfig:
    """The resolved tunesmith config a run or export wrote (``config.yaml`` or the export's)."""
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:
        raise ConfigError(
            f"Could not read the run's saved config: {exc}",
            where=str(path),
            hint="this file is written by tunesmith; restore it or re-run the export stage.",
        ) from exc
    if not isinstance(cfg, DictConfig) or "model" not in cfg or "method" not in cfg:
        raise ConfigError(
            "This is not a tunesmith run config (it has no model/method).",
            where=str(path),
        )
    return cfg


def run_for(cfg: DictConfig, directory: Path, current: Run) -> Run:
    """A :class:`Run` for a saved config, sharing the current plugin manager when it can."""
    plugins = current.plugins
    wanted = [str(p) for p in cfg.get("plugins") or []]
    if wanted and wanted != [str(p) for p in current.cfg.get("plugins") or []]:
        from framework.manager import build_plugin_manager

        plugins = build_plugin_manager(extra=wanted)
    return Run(cfg=cfg, dir=directory, plugins=plugins)


def _load_hf_folder(path: Path, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"Could not load the model in '{path}': {exc}",
            where=f"serve.model={path}",
            hint="point serve.model at a run directory, export/merged or export/adapter.",
        ) from exc
    return model, tokenizer


def _adapter_base_config(path: Path) -> Path | None:
    for candidate in (path / EXPORT_CONFIG, path.parent / "config.yaml", path / "config.yaml"):
        if candidate.is_file():
            return candidate
    return None


def _load_adapter(path: Path, current: Run, dtype: Any) -> tuple[Any, Any, str]:
    """An adapter folder on top of its base model, rebuilt from the run's saved config."""
    from transformers import AutoTokenizer

    cfg_path = _adapter_base_config(path)
    if cfg_path is None:
        import json

        base_path = json.loads((path / "adapter_config.json").read_text()).get(
            "base_model_name_or_path"
        )
        if not base_path or not Path(base_path).is_dir():
            raise ModelError(
                "This adapter folder has no tunesmith config and its base model folder "
                f"'{base_path}' does not exist here.",
                where=f"serve.model={path}",
                hint=f"serve the run directory instead, or add the run's {EXPORT_CONFIG}.",
            )
        from peft import PeftModel

        base, tokenizer = _load_hf_folder(Path(base_path), dtype)
        return PeftModel.from_pretrained(base, path), tokenizer, path.name
    cfg = saved_config(cfg_path)
    source = run_for(cfg, cfg_path.parent, current)
    base, tokenizer = source.build_base()
    name = str(cfg.method.name)
    source.plugins.require("method", name)
    model = source.hook.tunesmith_load_method(name=name, base_model=base, path=path, cfg=cfg)
    if (path / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer, str(cfg.get("run_name") or path.name)


def serve_config(run: Run) -> DictConfig:
    """The ``serve`` config group of ``run`` (empty when the config has none)."""
    node = run.cfg.get("serve")
    return node if node is not None else OmegaConf.create({})


def resolve_source(run: Run) -> Path | None:
    """The folder ``serve.model`` names (relative paths from where the command ran)."""
    spec = serve_config(run).get("model")
    if spec in (None, "", "???"):
        return None
    from framework.data.prepare import original_cwd

    path = Path(str(spec)).expanduser()
    return path if path.is_absolute() else original_cwd() / path


def load_chat_model(run: Run) -> tuple[Any, Any, str]:
    """Load what ``serve.model`` names (see the module docstring) for inference.

    Args:
        run: the current run; ``run.cfg.serve`` says what to load and how.

    Returns:
        ``(model, tokenizer, model_id)`` with the model in eval mode on ``serve.device``.

    Raises:
        ConfigError: ``serve.model`` names nothing loadable.
        ModelError: the folder exists but holds no usable model.
    """
    serve_cfg = serve_config(run)
    dtype = _serve_dtype(serve_cfg.get("dtype"))
    path = resolve_source(run)
    model_id = ""
    if path is None and run.trained and run.model is not None:
        model, tokenizer = run.model, run.tokenizer  # trained by an earlier stage of this command
        model_id = str(run.cfg.get("run_name") or run.dir.name)
    else:
        where = "serve.model" if path is not None else "hydra.run.dir"
        path = path or run.dir
        if not path.exists():
            raise ConfigError(
                f"'{path}' does not exist.",
                where=f"{where}={path}",
                hint="give a run directory, an export folder or a Hugging Face model folder.",
            )
        if (path / "adapter_config.json").is_file():
            model, tokenizer, model_id = _load_adapter(path, run, dtype)
        elif (path / "config.json").is_file():
            model, tokenizer = _load_hf_folder(path, dtype)
            model_id = path.name
            if (path / EXPORT_CONFIG).is_file():  # an export of a run: name it after the run
                model_id = str(saved_config(path / EXPORT_CONFIG).get("run_name") or path.name)
        elif (path / "config.yaml").is_file() and (path / "artifact").is_dir():
            source = run_for(saved_config(path / "config.yaml"), path, run)
            model, tokenizer = source.load_tuned()
            model_id = str(source.cfg.get("run_name") or path.name)
        else:
            raise ConfigError(
                f"There is no trained model in '{path}'.",
                where=f"{where}={path}",
                hint="use the overrides you trained with (the run directory is named from "
                "them), or point hydra.run.dir at a finished run (python run.py stages=[serve] "
                "hydra.run.dir=outputs/runs/<run>), or serve.model at a run directory, "
                "export/merged, export/adapter or a Hugging Face model folder.",
            )
    ensure_chat_template(tokenizer)
    model.eval()
    device = _device(str(serve_cfg.get("device") or "auto"))
    if not is_quantized(model):
        model.to(device)
    if serve_cfg.get("model_id"):
        model_id = str(serve_cfg.model_id)
    return model, tokenizer, model_id or "tunesmith"


def _serve_dtype(name: Any) -> Any:
    if name in (None, "", "auto"):
        return "auto"
    from framework.model.loading import DTYPES, torch_dtype

    if str(name).lower() not in DTYPES:
        raise ConfigError(
            f"Unknown dtype '{name}'.", where="serve.dtype", hint=f"one of {sorted(DTYPES)}"
        )
    return torch_dtype(name)


def _device(name: str) -> str:
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# --------------------------------------------------------------------------- generation


class _CancelCriteria:
    """A ``StoppingCriteria`` that stops generation once ``event`` is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


class _TokenQueue:
    """A ``model.generate`` streamer that hands the new token ids over to the reader."""

    def __init__(self) -> None:
        self.queue: queue.Queue[list[int] | None] = queue.Queue()
        self._prompt = True

    def put(self, value: Any) -> None:
        if self._prompt:  # generate hands over the prompt first
            self._prompt = False
            return
        self.queue.put([int(i) for i in value.reshape(-1).tolist()])

    def end(self) -> None:
        self.queue.put(None)

    def chunks(self) -> Iterator[list[int]]:
        """The new ids, as ``generate`` hands them over, until the end."""
        while (item := self.queue.get()) is not None:
            yield item


class ChatEngine:
    """One model and tokenizer, answering chat conversations one at a time.

    Prompts, settings, end of turn and stop strings are those of
    :mod:`framework.model.generation`, shared with the evaluate stage: for the same prompt and
    greedy settings, a chat answer is the answer evaluation scores.

    Args:
        model: a causal LM in eval mode.
        tokenizer: its tokenizer, with the chat template the model was trained with.
        model_id: the name the model is served under.
        defaults: the generation parameters a request does not override.
    """

    def __init__(
        self, model: Any, tokenizer: Any, model_id: str, defaults: GenerationParams | None = None
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.defaults = defaults or GenerationParams()
        self.lock = threading.Lock()
        self.eot_ids = end_of_turn_ids(model, tokenizer)
        self.context_length = getattr(model.config, "max_position_embeddings", None)
        self._count_lock = threading.Lock()
        self.active = 0  # generations running or waiting for the model

    @classmethod
    def from_run(cls, run: Run) -> ChatEngine:
        """Load the model ``serve.model`` names, with ``serve.*`` generation defaults."""
        model, tokenizer, model_id = load_chat_model(run)
        return cls(model, tokenizer, model_id, GenerationParams.from_serve(serve_config(run)))

    def prompt(self, messages: list[dict]) -> str:
        """The text the model sees: ``messages`` in its chat template, plus the answer prompt."""
        return prompt_text(self.tokenizer, messages)

    def stream(self, messages: list[dict], params: GenerationParams | None = None) -> TextStream:
        """Start answering ``messages``; iterate the result for the answer's text pieces.

        Raises:
            PromptTooLongError: the conversation does not fit in the model's context.
        """
        return TextStream(self, messages, params or self.defaults)

    def complete(self, messages: list[dict], params: GenerationParams | None = None) -> TextStream:
        """Answer ``messages`` and wait for the whole answer (``.text``, ``.finish_reason``)."""
        stream = self.stream(messages, params)
        stream.collect()
        return stream

    @property
    def busy(self) -> bool:
        """Whether a generation is running now."""
        return self.lock.locked()


class TextStream:
    """One answer being generated: iterate it for text pieces as they come.

    The pieces add up to ``text``, the answer :func:`framework.model.generation.answer_text`
    gives for the generated tokens: text that a stop string could still cut, and spaces the
    answer could still end with, are held back until the next tokens settle them.

    After iteration, ``text`` is the whole answer, ``finish_reason`` is ``"stop"`` (end of
    turn or a stop string) or ``"length"`` (``max_new_tokens`` reached), and
    ``prompt_tokens`` / ``completion_tokens`` count tokens. ``cancel()`` stops the generation
    at the next token (used when a client goes away).
    """

    def __init__(self, engine: ChatEngine, messages: list[dict], params: GenerationParams) -> None:
        self.engine = engine
        self.params = params
        self.encoded = encode_prompts(engine.tokenizer, [engine.prompt(messages)])
        self.prompt_tokens = int(self.encoded["input_ids"].shape[1])
        self.max_new_tokens = int(params.max_new_tokens)
        limit = engine.context_length
        if limit:
            if self.prompt_tokens >= limit:
                raise PromptTooLongError(
                    f"The conversation is {self.prompt_tokens} tokens long; the model's "
                    f"context holds {limit}.",
                    where="messages",
                    hint="shorten the conversation (or start a new one).",
                )
            self.max_new_tokens = min(self.max_new_tokens, limit - self.prompt_tokens)
        self._tokens = _TokenQueue()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._generate, daemon=True, name="tunesmith-gen")
        self._error: BaseException | None = None
        self._output_ids: list[int] | None = None
        self.text = ""
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self._started = False

    # the worker thread ----------------------------------------------------------
    def _generate(self) -> None:
        engine = self.engine
        with engine._count_lock:
            engine.active += 1
        try:
            with engine.lock:  # one generation at a time; later requests wait here
                if self._cancel.is_set():
                    return
                device = getattr(engine.model, "device", "cpu")
                new = generate_ids(
                    engine.model,
                    engine.tokenizer,
                    self.encoded.to(device),
                    self.params.replace(max_new_tokens=self.max_new_tokens),
                    engine.eot_ids,
                    streamer=self._tokens,
                    criteria=[_CancelCriteria(self._cancel)],
                )
                self._output_ids = new[0].tolist()
        except BaseException as exc:  # handed to the reader, which re-raises it
            self._error = exc
        finally:
            with engine._count_lock:
                engine.active -= 1
            self._tokens.end()

    # the reader ----------------------------------------------------------------
    def start(self) -> TextStream:
        """Start generating in the worker thread (iteration starts it too)."""
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def cancel(self) -> None:
        """Stop generating at the next token (or before starting, if still waiting)."""
        self._cancel.set()

    def __iter__(self) -> Iterator[str]:
        self.start()
        tokenizer, eot_ids, stops = self.engine.tokenizer, self.engine.eot_ids, self.params.stop
        hold = max((len(s) for s in stops), default=1) - 1
        # a tokenizer that cleans up spaces (" ." -> ".") may change the end of a word later
        whole_words = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))
        ids: list[int] = []
        emitted = ""
        completed = False
        try:
            for chunk in self._tokens.chunks():
                ids.extend(chunk)
                text = answer_text(tokenizer, ids, eot_ids, stops)
                safe = text[: max(0, len(text) - hold)].rstrip()
                if whole_words:
                    safe = safe[: max(safe.rfind(" "), safe.rfind("\n"), 0)].rstrip()
                if len(safe) > len(emitted) and safe.startswith(emitted):
                    yield safe[len(emitted) :]
                    emitted = safe
            completed = True
        finally:
            if not completed:  # the reader stopped early (client gone): stop generating too
                self._cancel.set()
        self._finish(ids)
        if not self.text.startswith(emitted):
            log.warning("the streamed answer differs from the final one: %r", self.text)
        elif len(self.text) > len(emitted):
            yield self.text[len(emitted) :]

    def _finish(self, streamed: list[int]) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error
        generated = self._output_ids if self._output_ids is not None else streamed
        tokenizer, eot_ids, stops = self.engine.tokenizer, self.engine.eot_ids, self.params.stop
        self.text = answer_text(tokenizer, generated, eot_ids, stops)
        self.completion_tokens = len(generated)
        if (
            any(t in eot_ids for t in generated)
            or first_stop(decode_answer(tokenizer, generated, eot_ids), stops) is not None
            or self.completion_tokens < self.max_new_tokens
        ):
            self.finish_reason = "stop"
        else:
            self.finish_reason = "length"

    def collect(self) -> str:
        """Generate the whole answer and return it."""
        for _ in self:
            pass
        return self.text
