"""Models from the Hugging Face Hub: ``model.path=<org>/<name>`` when it is not a local folder.

A local folder is always used as it is and never touches the network. A Hub id is looked up
in the standard Hugging Face cache (``HF_HOME``, ``HF_HUB_CACHE``) and downloaded there when
the environment allows it, with a progress bar. The user's ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``
(a mirror, e.g. ``https://hf-mirror.com``), ``HF_HOME`` and ``HF_TOKEN`` are honoured as
huggingface_hub reads them; tunesmith sets none of them.

Offline (``HF_HUB_OFFLINE=1``, or the Hub cannot be reached) and not cached: one
:class:`~framework.errors.ModelError` that says how to get the model.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from framework.errors import ModelError

log = logging.getLogger(__name__)

#: ``name`` or ``namespace/name``, as the Hub spells repository ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")

#: Files a causal-LM download skips: weights for other runtimes and framework copies.
IGNORE_PATTERNS = [
    "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.onnx_data", "*.ot",
    "*.tflite", "*.gguf", "*.mlmodel", "*.mlpackage/*", "onnx/*", "openvino/*", "original/*",
    "coreml/*", "*.md", ".gitattributes",
]  # fmt: skip
#: What is fetched when the repository has no safetensors: the PyTorch weights.
BIN_PATTERNS = ["pytorch_model*.bin", "*.bin.index.json"]

#: Where the Hub lives unless HF_ENDPOINT says otherwise.
DEFAULT_ENDPOINT = "https://huggingface.co"
#: A mirror for users who cannot reach huggingface.co (e.g. in mainland China).
MIRROR_HINT = "https://hf-mirror.com"


def looks_like_hub_id(path: str) -> bool:
    """Whether ``path`` reads as a Hub repository id (``org/name`` or ``name``), not a path."""
    text = str(path)
    return (
        bool(_HUB_ID.match(text))
        and ".." not in text
        and "--" not in text
        and not text.startswith((".", "~"))
    )


def resolve_model_path(path: str | Path, revision: str | None = None) -> Path:
    """The local folder to load ``model.path`` from.

    An existing path (or anything that is not shaped like a Hub id) is returned as it is:
    it never touches the network, and a missing folder is reported by
    :func:`framework.model.loading.check_model_dir`. A Hub id is resolved to its snapshot in
    the Hugging Face cache, downloaded first when needed and allowed (:func:`download_model`).

    Args:
        path: ``model.path`` as the user gave it.
        revision: a branch, tag or commit of the Hub repository (default: ``main``).
    """
    local = Path(str(path)).expanduser()
    if local.exists() or not looks_like_hub_id(str(path)):
        return local
    return download_model(str(path), revision=revision)


def _show_progress() -> bool:
    """A download shows its bar unless the *user* set ``HF_HUB_DISABLE_PROGRESS_BARS``
    (framework/__init__.py sets it only to quiet the weight-loading bars)."""
    from framework import HF_PROGRESS_DEFAULT_ENV

    value = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").strip().lower()
    user_disabled = value in ("1", "true", "yes", "on")
    return not user_disabled or os.environ.get(HF_PROGRESS_DEFAULT_ENV) == "1"


def _how_to_get(repo_id: str, offline: bool) -> str:
    folder = f"models/{repo_id.rsplit('/', 1)[-1]}"
    online = (
        "or unset HF_HUB_OFFLINE to let tunesmith download it into the cache"
        if offline
        else "or check the network and proxy settings (HTTPS_PROXY) and run again"
    )
    return (
        f"download it where there is network: `hf download {repo_id} --local-dir {folder}`, "
        f"then run with model.path={folder}; {online}. Where huggingface.co cannot be "
        f"reached (e.g. in mainland China), use a mirror: export HF_ENDPOINT={MIRROR_HINT}"
    )


def download_model(repo_id: str, revision: str | None = None) -> Path:
    """The cached snapshot folder of the Hub model ``repo_id``, downloading what is missing.

    Only what loading a causal LM needs is fetched: config, tokenizer and chat-template files
    and the safetensors weights (the PyTorch ``.bin`` weights only when the repository has no
    safetensors). Offline, a complete cached snapshot is used as it is.

    Raises:
        ModelError: offline (or the Hub unreachable) and not cached; no such repository or
            revision; a gated or private repository without access; any other Hub error.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = constants.ENDPOINT or DEFAULT_ENDPOINT
    offline = constants.is_offline_mode()
    where = f"model.path={repo_id}"
    kwargs: dict = {"revision": revision}
    if _show_progress():
        from tqdm.auto import tqdm

        kwargs["tqdm_class"] = tqdm  # huggingface_hub's own bars obey the quiet default
    log.info(
        "model.path=%s is not a local folder: a Hub id, taken from the Hugging Face cache (%s)%s.",
        repo_id,
        constants.HF_HUB_CACHE,
        " only, as HF_HUB_OFFLINE is set"
        if offline
        else f"; what is missing comes from {endpoint}",
    )
    try:
        with _quiet_http_logs():  # one INFO line per request otherwise; the bar says enough
            folder = Path(snapshot_download(repo_id, ignore_patterns=IGNORE_PATTERNS, **kwargs))
            if not any(folder.glob("*.safetensors")):
                folder = Path(snapshot_download(repo_id, allow_patterns=BIN_PATTERNS, **kwargs))
    except GatedRepoError as exc:
        raise ModelError(
            f"The model '{repo_id}' on {endpoint} is gated: its files need your consent and a "
            "token.",
            where=where,
            hint=f"accept its terms on {endpoint}/{repo_id}, then log in (`hf auth login`) or "
            "set HF_TOKEN.",
        ) from exc
    except RevisionNotFoundError as exc:
        raise ModelError(
            f"The model '{repo_id}' on {endpoint} has no revision '{revision or 'main'}'.",
            where=where,
            hint="check the branch, tag or commit name.",
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelError(
            f"'{repo_id}' is neither a local model folder nor a model on {endpoint}.",
            where=where,
            hint="check the spelling (a Hub id is org/name, e.g. Qwen/Qwen2.5-0.5B-Instruct); "
            "for a local folder give a path that exists (./models/x or /abs/path); a private "
            "model needs `hf auth login` or HF_TOKEN.",
        ) from exc
    except LocalEntryNotFoundError as exc:
        reason = (
            "HF_HUB_OFFLINE is set"
            if offline
            else f"the Hub at {endpoint} could not be reached ({_first_line(exc)})"
        )
        raise ModelError(
            f"The model '{repo_id}' is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
            f"and {reason}.",
            where=where,
            hint=_how_to_get(repo_id, offline),
        ) from exc
    except HfHubHTTPError as exc:
        raise ModelError(
            f"Downloading the model '{repo_id}' from {endpoint} failed: {_first_line(exc)}",
            where=where,
            hint="try again later; " + _how_to_get(repo_id, offline),
        ) from exc
    log.info("Model %s: %s", repo_id, folder)
    return folder


@contextmanager
def _quiet_http_logs() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("httpx", "httpx2", "httpcore")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.level, logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
