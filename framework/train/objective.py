"""The training objective: its declared options, and what its loss hook is given.

``objective=<name>`` picks the objective (a ``conf/objective/<name>.yaml``, or one a plugin
package ships); ``objective.<option>=...`` sets its options. What the objective needs from
the core it declares in its :class:`framework.Objective` descriptor: its options and their
defaults, the extra fields of its encoded examples, whether it may be packed, whether it
compares against a reference model. :func:`describe_objective` reads that (and rejects an
option it does not declare); :class:`LossContext` is what ``tunesmith_compute_loss`` gets as
``ctx``: the options, the step, train or validation, a way to log extra values, and the
reference model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from framework.descriptors import Objective
from framework.errors import ConfigError, TunesmithError, did_you_mean


def objective_name(cfg: DictConfig) -> str:
    """The name of the objective ``cfg`` trains with (``cfg.objective.name``)."""
    return str(cfg.objective.name)


def describe_objective(cfg: DictConfig, plugins: Any) -> Objective:
    """What the plugin serving ``cfg.objective.name`` declared, after checking its options.

    An objective served without a descriptor (the old ``{"objective": [name]}`` form)
    declares the defaults: no options, no extra batch fields, packing allowed, no
    reference model.

    Raises:
        ConfigError: no plugin serves the objective, or ``cfg.objective`` sets an option
            the objective does not declare.
    """
    name = objective_name(cfg)
    plugins.require("objective", name)
    info = plugins.describe("objective", name)
    if not isinstance(info, Objective):
        info = Objective(name)
    check_options(cfg, info)
    return info


def check_options(cfg: DictConfig, info: Objective) -> None:
    """Raise :class:`ConfigError` for a key of ``cfg.objective`` that ``info`` does not declare."""
    declared = list(info.options)
    for key in cfg.objective:
        if key == "name" or key in declared:
            continue
        served = f"Its options: {', '.join(declared)}." if declared else "It has no options."
        raise ConfigError(
            f"The objective '{info.name}' has no option '{key}'.{did_you_mean(key, declared)} "
            f"{served}",
            where=f"objective.{key}",
            hint="check the spelling; python run.py plugins lists every objective's options.",
        )


def objective_options(cfg: DictConfig, info: Objective) -> DictConfig:
    """The objective's options: its declared defaults, overridden by ``cfg.objective``.

    An objective picked by ``objective.name=<name>`` (a plugin with no config file of its
    own) gets its declared defaults this way.
    """
    defaults = OmegaConf.create(dict(info.options))
    merged = OmegaConf.merge(defaults, cfg.objective)
    assert isinstance(merged, DictConfig)
    OmegaConf.set_readonly(merged, True)
    return merged


def _first_float(model: Any) -> Any:
    """The first floating-point parameter of ``model`` (its device and dtype), or ``None``."""
    for p in model.parameters():
        if p.is_floating_point():
            return p
    return None


class ReferenceModel:
    """The model an objective compares the trained one against (DPO's reference policy).

    For a model with PEFT adapters that is the model itself inside
    ``model.disable_adapter()``: the frozen base, at no extra memory. Otherwise it is a
    frozen deep copy of the model as training starts, made once by :meth:`freeze_copy`: in
    eval mode, ``requires_grad=False``, and held here rather than as a submodule, so it is
    neither trained nor saved in checkpoints. Made before a checkpoint is restored, the copy
    is the model training started from, also when a run resumes.

    Args:
        model: the model being trained.
    """

    def __init__(self, model: Any) -> None:
        self.uses_adapters = bool(
            callable(getattr(model, "disable_adapter", None))
            and getattr(model, "peft_config", None)
        )
        self.copy: Any = None
        if not self.uses_adapters:
            self.copy = self.freeze_copy(model)

    @staticmethod
    def freeze_copy(model: Any) -> Any:
        """A deep copy of ``model`` in eval mode with every parameter frozen."""
        frozen = copy.deepcopy(model)
        frozen.eval()
        for p in frozen.parameters():
            p.requires_grad_(False)
            p.grad = None
        return frozen

    @contextmanager
    def __call__(self, model: Any) -> Iterator[Any]:
        """Yield the reference for ``model`` (the trained model), under ``torch.no_grad``."""
        import torch

        with torch.no_grad():
            if self.uses_adapters:
                modes = [(m, m.training) for m in model.modules()]
                model.eval()  # no dropout in the reference
                try:
                    with model.disable_adapter():
                        yield model
                finally:
                    for m, mode in modes:
                        m.training = mode
                return
            like = _first_float(model)
            ref = _first_float(self.copy)
            if like is not None and ref is not None:
                if ref.device != like.device:
                    self.copy.to(like.device)
                if ref.dtype != like.dtype:
                    self.copy.to(like.dtype)
            yield self.copy


@contextmanager
def starting_model(model: Any) -> Iterator[Any]:
    """The reference for ``model`` before it has trained, without a copy: the model with its
    PEFT adapters switched off, or the model itself; in eval mode, under ``torch.no_grad``
    (train/eval modes are restored after). For computing reference values once before
    training (``tunesmith_precompute``)."""
    import torch

    uses_adapters = bool(
        callable(getattr(model, "disable_adapter", None)) and getattr(model, "peft_config", None)
    )
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            if uses_adapters:
                with model.disable_adapter():
                    yield model
            else:
                yield model
    finally:
        for m, mode in modes:
            m.training = mode


@dataclass
class LossContext:
    """What ``tunesmith_compute_loss`` gets as ``ctx``, built for every step.

    Attributes:
        cfg: the whole run config.
        options: the objective's options (``cfg.objective`` over its declared defaults;
            read-only), e.g. ``ctx.options.beta``.
        objective: the objective's descriptor.
        step: the global step (optimizer steps done so far).
        training: ``True`` in a training step, ``False`` in validation.
        model: the model being trained.
    """

    cfg: DictConfig
    options: DictConfig
    objective: Objective
    step: int = 0
    training: bool = True
    model: Any = None
    logger: Callable[[str, Any], None] | None = field(default=None, repr=False)
    reference_model: ReferenceModel | None = field(default=None, repr=False)

    def log(self, name: str, value: Any) -> None:
        """Log an extra value of this batch (a reward, an accuracy...).

        In training it is logged as ``train/<name>`` at every step; in validation as
        ``val/<name>``, averaged over the validation pass (weighted like ``val/loss``).
        """
        if self.logger is not None:
            self.logger(name, value)

    @contextmanager
    def reference(self) -> Iterator[Any]:
        """A model to compute reference outputs with, under ``torch.no_grad``::

            with ctx.reference() as ref:
                ref_logits = ref(**model_inputs(batch)).logits

        With PEFT adapters it is the trained model with its adapters switched off; otherwise
        a frozen copy of the model training started from. Only an objective that declares
        ``reference=True`` may ask for it.

        Raises:
            TunesmithError: the objective does not declare ``reference=True``.
        """
        if self.objective.reference and self.reference_model is None and self.objective.precomputed:
            raise TunesmithError(
                f"The objective '{self.objective.name}' asked for a reference model, but its "
                "reference values were precomputed, so none was kept.",
                where=f"objective={self.objective.name}",
                hint="its loss should read the precomputed fields from the batch "
                "(Objective.precomputed) when they are there.",
            )
        if not self.objective.reference or self.reference_model is None:
            raise TunesmithError(
                f"The objective '{self.objective.name}' asked for a reference model "
                "(ctx.reference()) but does not declare that it needs one.",
                where=f"objective={self.objective.name}",
                hint="its plugin must declare Objective(..., reference=True) in "
                "tunesmith_provides, so the reference is prepared before training.",
            )
        with self.reference_model(self.model) as ref:
            yield ref


def compute_loss(
    plugins: Any, model: Any, batch: dict[str, Any], cfg: DictConfig, ctx: LossContext | None = None
) -> Any:
    """The objective's loss of ``batch`` through ``tunesmith_compute_loss``.

    Args:
        plugins: the plugin manager.
        model: the model being trained.
        batch: a collated batch.
        cfg: the whole run config.
        ctx: the loss context; ``None``: one for validation at step 0, with nothing logged
            (for evaluating a loss outside training).

    Raises:
        TunesmithError: no plugin computed a loss for the objective.
    """
    if ctx is None:
        info = describe_objective(cfg, plugins)
        ctx = LossContext(
            cfg=cfg,
            options=objective_options(cfg, info),
            objective=info,
            training=False,
            model=model,
            reference_model=ReferenceModel(model) if info.reference else None,
        )
    loss = plugins.hook.tunesmith_compute_loss(
        name=ctx.objective.name, model=model, batch=batch, cfg=cfg, ctx=ctx
    )
    if loss is None:
        raise TunesmithError(
            f"No plugin computed a loss for the objective '{ctx.objective.name}'.",
            where=f"objective={ctx.objective.name}",
            hint="the plugin that serves it must implement tunesmith_compute_loss.",
        )
    return loss
