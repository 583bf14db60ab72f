"""What a plugin declares about the names it serves, so the core reads instead of guessing.

A plugin's ``tunesmith_provides`` returns a list of these descriptors, one per name it
serves::

    from framework import Metric, hookimpl

    @hookimpl
    def tunesmith_provides():
        return [Metric("wer", higher_is_better=False, needs=("generations",),
                       description="word error rate of the generated answers")]

The core never infers anything from a name: a metric's direction, a method's kind, an
objective's options and batch fields, an export's description all come from here.
``python run.py plugins`` shows every field. The old form, a mapping from stage key to names
(``{"metric": ["wer"]}``), still works: each name gets a descriptor with the defaults below
(for a metric: no declared direction, so reports show its change without "better"/"worse";
a method gets no :class:`Method` at all, since its kind cannot be guessed: the core then
assumes the most conservative one, e.g. every weight training for the memory estimate).

Descriptors are frozen dataclasses; their stage key is the class attribute ``key``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

#: What a metric may need from the evaluate stage (``Metric.needs``).
METRIC_NEEDS = ("generations", "token_stats", "choices", "model", "reference", "validation")
#: Method kinds (``Method.kind``).
METHOD_KINDS = ("adapter", "full", "partial")
#: What the examples an objective trains on look like (``Objective.example``,
#: ``DataFormat.produces``).
EXAMPLE_SHAPES = ("chat", "text", "pair", "unpaired", "any")


@dataclass(frozen=True)
class Provided:
    """A name a plugin serves for one stage key.

    Attributes:
        name: the name users pick in config (``method=<name>``...).
        description: one line for ``python run.py plugins`` and error messages.
    """

    name: str
    description: str = ""

    #: The stage key this kind of descriptor is listed under.
    key: ClassVar[str] = ""

    def metadata(self) -> dict[str, Any]:
        """The declared fields other than name and description (for listings)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("name", "description"):
                continue
            value = getattr(self, f.name)
            if callable(value):
                value = getattr(value, "__qualname__", repr(value))
            elif isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


@dataclass(frozen=True)
class Stage(Provided):
    """A pipeline stage (``stages=[<name>]``).

    Attributes:
        run: ``run(run: framework.run.Run) -> Any``, called to run the stage. ``None``: the
            plugin runs it from its ``tunesmith_run_stage`` hook instead (the old contract).
        session: the stage uses a finished run without changing it (``chat``, ``serve``):
            not recorded in the run state, runs again every time it is asked for.
        uses: the stage keys whose configured names the stage reads (``file``, ``format``,
            ``objective``, ``model``, ``method``, ``metric``, ``export``): a run checks
            those names at start-up, before any stage runs.
    """

    run: Callable[[Any], Any] | None = None
    session: bool = False
    uses: tuple[str, ...] = ()
    key: ClassVar[str] = "stage"


@dataclass(frozen=True)
class FileType(Provided):
    """A data file type, named by its suffix (``.jsonl``, ``.qa.txt``); the longest
    matching suffix picks the reader."""

    key: ClassVar[str] = "file"


@dataclass(frozen=True)
class DataFormat(Provided):
    """A record shape (``data.format=<name>``).

    Attributes:
        produces: the examples it makes: ``chat`` (``messages``), ``text``, ``pair``
            (``messages`` ending with the chosen answer, plus ``rejected``), ``unpaired``
            (``messages`` plus a boolean ``label``).
    """

    produces: str = "chat"
    key: ClassVar[str] = "format"


@dataclass(frozen=True)
class ModelSource(Provided):
    """A source of base models (``model=<name>``)."""

    key: ClassVar[str] = "model"


@dataclass(frozen=True)
class Method(Provided):
    """A fine-tuning method (``method=<name>``).

    Attributes:
        kind: ``adapter`` (small trainable modules on a frozen base: saved alone, and the
            base with adapters disabled serves as a reference model), ``full`` (every
            weight trains), ``partial`` (some of the base's own weights train).
        base_bits: the bits per weight the frozen base is held in, when the method
            quantizes it (4 for QLoRA); ``None``: the model's own dtype.
        trainable_share: about what share of the parameters train, for the memory
            estimate (``None``: 1.0 for ``full``, 0.01 for ``adapter``, 0.1 for ``partial``).
    """

    kind: str = "adapter"
    base_bits: int | None = None
    trainable_share: float | None = None
    key: ClassVar[str] = "method"

    def __post_init__(self) -> None:
        if self.kind not in METHOD_KINDS:
            raise ValueError(f"Method '{self.name}': kind must be one of {METHOD_KINDS}")

    @property
    def share(self) -> float:
        """The share of parameters that train (declared, or the kind's default)."""
        if self.trainable_share is not None:
            return float(self.trainable_share)
        return {"full": 1.0, "adapter": 0.01, "partial": 0.1}[self.kind]


@dataclass(frozen=True)
class Objective(Provided):
    """A training objective (``objective=<name>``, options under ``objective.``).

    Attributes:
        options: the options and their defaults (the ``conf/objective/<name>.yaml`` a
            plugin ships holds the same keys); shown by ``python run.py plugins``.
        example: the examples it trains on (see :class:`DataFormat`); ``any`` for all.
        batch_fields: keys its encoded examples carry besides ``input_ids``/``labels``; the
            token cache keeps them and its ``tunesmith_collate`` hook batches them.
        reference: it needs a reference model (``LossContext.reference()``).
        packing: its batches may be packed (several examples per row).
        precomputed: the fields its ``tunesmith_precompute`` hook may add to every encoded
            example before training, computed once with the reference model (e.g. reference
            log-probabilities); they are stored with the encoded data, so a resumed run or a
            later run on the same data and starting model reads them back.
    """

    options: Mapping[str, Any] = field(default_factory=dict)
    example: str = "chat"
    batch_fields: tuple[str, ...] = ()
    reference: bool = False
    packing: bool = True
    precomputed: tuple[str, ...] = ()
    key: ClassVar[str] = "objective"


@dataclass(frozen=True)
class Metric(Provided):
    """An evaluation metric (``evaluator.metrics=[<name>]``).

    Attributes:
        higher_is_better: its direction; ``None`` when it has none (a count, a length).
            Applies to every key the metric reports that starts with its name (``rouge``
            -> ``rouge1``, ``rougeL``); a :class:`Score` can override it per key.
        needs: what it reads from the evaluate stage (see :data:`METRIC_NEEDS`).
    """

    higher_is_better: bool | None = True
    needs: tuple[str, ...] = ("generations",)
    key: ClassVar[str] = "metric"

    @property
    def direction(self) -> str | None:
        """``higher``, ``lower`` or ``None``."""
        if self.higher_is_better is None:
            return None
        return "higher" if self.higher_is_better else "lower"


@dataclass(frozen=True)
class ExportFormat(Provided):
    """An export format (``export.formats=[<name>]``).

    Attributes:
        writes: what it writes, in a few words (shown in listings and the model card).
    """

    writes: str = ""
    key: ClassVar[str] = "export"


@dataclass(frozen=True)
class Score:
    """A metric value with what only the computation knows (from ``tunesmith_compute_metrics``).

    Attributes:
        value: the number.
        higher_is_better: overrides the metric's declared direction for this key.
        stderr: its standard error, when known.
    """

    value: float
    higher_is_better: bool | None = None
    stderr: float | None = None


#: Levels of a :class:`Note`.
NOTE_LEVELS = ("warning", "info")


@dataclass(frozen=True)
class Note:
    """A few sentences a plugin adds to the evaluation report (from ``tunesmith_report_notes``).

    Printed under the metrics table in the console and written into ``eval_report.md``.

    Attributes:
        text: what happened and what to try (Markdown; may span lines).
        title: a short headline, e.g. ``"The tuned answers collapsed"``.
        level: ``warning`` (something is likely wrong) or ``info``.
    """

    text: str
    title: str = ""
    level: str = "warning"

    def __post_init__(self) -> None:
        if self.level not in NOTE_LEVELS:
            raise ValueError(f"Note level must be one of {NOTE_LEVELS}, not {self.level!r}")


#: Descriptor class of each stage key.
KINDS: dict[str, type[Provided]] = {
    cls.key: cls
    for cls in (Stage, FileType, DataFormat, ModelSource, Method, Objective, Metric, ExportFormat)
}


def as_descriptors(provided: Any) -> list[Provided]:
    """Normalise what a ``tunesmith_provides`` implementation returned.

    Accepts a list of descriptors, or the old mapping ``{stage key: [names]}`` (whose
    values may also hold descriptors). The old ``session`` key marks stages as session
    stages.

    Raises:
        TypeError: something else was returned.
    """
    if provided is None:
        return []
    if isinstance(provided, Provided):
        return [provided]
    if isinstance(provided, Mapping):
        out: list[Provided] = []
        sessions = {str(n) for n in provided.get("session", ())}
        for key, names in provided.items():
            if key == "session":
                continue
            if isinstance(names, str | Provided):
                names = [names]
            for name in names:
                if isinstance(name, Provided):
                    out.append(name)
                elif key == "stage":
                    out.append(Stage(str(name), session=str(name) in sessions))
                elif key == "metric":
                    out.append(Metric(str(name), higher_is_better=None))
                elif key == "method":  # its kind is unknown: never default it to "adapter"
                    out.append(_Other(str(name), stage_key="method"))
                else:
                    cls = KINDS.get(str(key))
                    out.append(cls(str(name)) if cls else _Other(str(name), stage_key=str(key)))
        return out
    if isinstance(provided, Iterable) and not isinstance(provided, str | bytes):
        items = list(provided)
        bad = [x for x in items if not isinstance(x, Provided)]
        if bad:
            raise TypeError(f"expected descriptors (framework.Metric, ...), got {bad[0]!r}")
        return items
    raise TypeError(
        f"tunesmith_provides must return a list of descriptors, not {type(provided).__name__}"
    )


@dataclass(frozen=True)
class _Other(Provided):
    """A name with nothing tunesmith can read declared for it (kept for listings): a name
    under a stage key tunesmith does not know, or a method named in the old mapping form."""

    stage_key: str = ""

    def metadata(self) -> dict[str, Any]:
        return {}


def stage_key(info: Provided) -> str:
    """The stage key ``info`` is listed under."""
    return info.stage_key if isinstance(info, _Other) else info.key
