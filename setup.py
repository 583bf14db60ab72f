"""Packaging: which folders of the checkout go where in the wheel (the rest is pyproject.toml).

The checkout keeps its layout (framework/, plugins/, conf/, data/ at the top). The wheel puts
them inside the ``tunesmith`` package, under ``tunesmith/_root/``, laid out the same way, so
an install adds no top-level ``framework`` or ``plugins`` package to site-packages; the
``tunesmith`` package (tunesmith/__init__.py) makes them importable for tunesmith's own
processes. ``hydra_plugins/`` stays top-level: Hydra finds plugins only in that namespace.
"""

from setuptools import find_namespace_packages, find_packages, setup

ROOT = "tunesmith._root"
CODE = ("framework", "plugins")  # Python packages (folders with __init__.py)
CONF = [
    p
    for p in find_namespace_packages(include=["conf", "conf.*"], exclude=["*.__pycache__"])
    if p != "conf.local"  # untracked per-machine overrides: a user's own conf/local/ works instead
]
DATA = ["data.demo", "data.examples"]  # the demo data sets the shipped configs name

bundled = find_packages(include=[*CODE, *(f"{c}.*" for c in CODE)]) + CONF + DATA

setup(
    packages=[
        "tunesmith",
        *(f"{ROOT}.{p}" for p in bundled),
        *find_namespace_packages(
            include=["hydra_plugins", "hydra_plugins.*"], exclude=["*.__pycache__"]
        ),
    ],
    package_dir={f"{ROOT}.{p}": p.replace(".", "/") for p in bundled},
    package_data={
        f"{ROOT}.framework": ["py.typed"],
        **{f"{ROOT}.{p}": ["*.yaml"] for p in CONF},
        **{f"{ROOT}.{p}": ["*.jsonl"] for p in DATA},
    },
    include_package_data=False,
)
