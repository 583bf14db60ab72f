"""The export stage: write the tuned model where other tools can load it."""

from __future__ import annotations

import logging
from pathlib import Path

from framework.run import Run, atomic_path

log = logging.getLogger(__name__)


def export(run: Run) -> list[Path]:
    """Run every export format listed in ``export.formats``; return the directories written."""
    written = []
    for fmt in run.cfg.export.formats:
        fmt = str(fmt)
        run.plugins.require("export", fmt)
        target = run.dir / "export" / fmt
        with atomic_path(target) as tmp:
            tmp.mkdir()
            run.hook.tunesmith_export(name=fmt, run=run, path=tmp)
            (tmp / "config.yaml").write_text(run.resolved_config(), encoding="utf-8")
        log.info("exported %s -> %s", fmt, target)
        written.append(target)
    return written
