"""tunesmith's entry point: ``python run.py [group=option ...] [key=value ...]``.

Thin on purpose: Hydra composes the config, :func:`framework.cli.main` runs the stages.
Heavy libraries (torch, transformers) load only when a stage needs them, so ``--help`` and
``--cfg job`` answer at once.
"""

from framework.cli import main

if __name__ == "__main__":
    main()
