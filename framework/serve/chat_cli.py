"""Chat with a tuned model in the terminal: streamed answers, multi-turn, /reset and /exit.

The conversation is rendered with the tokenizer's chat template, the same one training used
(:func:`framework.model.generation.prompt_text`), and answers are streamed as they are
generated, ending where an evaluated answer would (the same end of turn and stop strings).
Start it with ``python run.py stages=[chat] hydra.run.dir=<finished run>`` (or
``serve.model=<folder>``).
"""

from __future__ import annotations

import sys
from typing import TextIO

from framework.model.generation import GenerationParams
from framework.run import Run
from framework.serve.engine import ChatEngine, PromptTooLongError, serve_config

HELP = "commands: /reset starts a new conversation, /exit quits (or Ctrl-D)"


def chat_loop(
    engine: ChatEngine,
    params: GenerationParams | None = None,
    system_prompt: str | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> list[dict]:
    """Read user turns from ``stdin`` and stream the model's answers to ``stdout``.

    Args:
        engine: the loaded model.
        params: generation settings (the engine's defaults when ``None``).
        system_prompt: a system message that starts every conversation.
        stdin: where user turns come from, one per line (``sys.stdin``).
        stdout: where prompts and answers go (``sys.stdout``).

    Returns:
        The conversation as it stood when the chat ended.
    """
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    start = [{"role": "system", "content": system_prompt}] if system_prompt else []
    history = list(start)

    def say(text: str = "", end: str = "\n") -> None:
        stdout.write(text + end)
        stdout.flush()

    say(f"chatting with {engine.model_id}; {HELP}")
    while True:
        say("you> ", end="")
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            say()
            break
        if not line:  # end of input
            say()
            break
        text = line.strip()
        if not text:
            continue
        if text in {"/exit", "/quit"}:
            break
        if text == "/reset":
            history = list(start)
            say("(new conversation)")
            continue
        if text.startswith("/"):
            say(f"unknown command {text}; {HELP}")
            continue
        history.append({"role": "user", "content": text})
        try:
            stream = engine.stream(history, params)
        except PromptTooLongError as exc:
            history.pop()
            say(f"({exc.what} Use /reset to start a new conversation.)")
            continue
        say("assistant> ", end="")
        answer: list[str] = []
        try:
            for piece in stream:
                answer.append(piece)
                say(piece, end="")
        except KeyboardInterrupt:
            stream.cancel()  # stop this answer, keep the chat
            say(" [interrupted]", end="")
        say()
        history.append({"role": "assistant", "content": stream.text or "".join(answer)})
    return history


def chat(run: Run) -> None:
    """The ``chat`` stage: load the model ``serve.model`` names and chat on the terminal."""
    engine = ChatEngine.from_run(run)
    cfg = serve_config(run)
    chat_loop(engine, system_prompt=cfg.get("system_prompt") or None)
