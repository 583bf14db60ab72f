"""Packaging: which folders of the checkout go where (the rest is in pyproject.toml).

The checkout keeps its layout (framework/, plugins/, conf/, data/ at the top). A wheel
(``pip install .``) puts them inside the ``tunesmith`` package, under ``tunesmith/_root/``,
laid out the same way, so the install adds no top-level ``framework`` or ``plugins`` package
to site-packages; importing ``tunesmith`` (the ``tunesmith`` command does) makes them
importable for tunesmith's own processes (tunesmith/__init__.py). ``hydra_plugins/`` stays
top-level: Hydra finds plugins only in that namespace.

An editable install (``pip install -e .``, what ``make install`` does for development) is
the checkout itself, as before: ``framework`` and ``plugins`` map to its folders.
"""

import sys

from setuptools import find_namespace_packages, find_packages, setup

ROOT = "tunesmith._root"
CODE = ("framework", "plugins")  # Python packages (folders with __init__.py)
CONF = [
    p
    for p in find_namespace_packages(include=["conf", "conf.*"], exclude=["*.__pycache__"])
    if p != "conf.local"  # untracked per-machine overrides: a user's own conf/local/ works instead
]
DATA = ["data.demo", "data.examples"]  # the demo data sets the shipped configs name

code = find_packages(include=[*CODE, *(f"{c}.*" for c in CODE)])
hydra = find_namespace_packages(
    include=["hydra_plugins", "hydra_plugins.*"], exclude=["*.__pycache__"]
)

if "editable_wheel" in sys.argv:  # pip install -e .: the checkout's own layout
    options = {"packages": ["tunesmith", *code, *hydra]}
else:
    bundled = code + CONF + DATA
    options = {
        "packages": ["tunesmith", *(f"{ROOT}.{p}" for p in bundled), *hydra],
        "package_dir": {f"{ROOT}.{p}": p.replace(".", "/") for p in bundled},
        "package_data": {
            f"{ROOT}.framework": ["py.typed"],
            # the board's pages, scripts and styles ship with it (it works offline)
            f"{ROOT}.plugins.board": ["templates/*.html", "static/*.js", "static/*.css"],
            **{f"{ROOT}.{p}": ["*.yaml"] for p in CONF},
            **{f"{ROOT}.{p}": ["*.jsonl"] for p in DATA},
        },
    }

setup(include_package_data=False, **options)
