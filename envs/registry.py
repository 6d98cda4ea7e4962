"""The suite registry: suite names -> suite classes, imported lazily, so tools and tests find every suite.

A suite is registered by the dotted path of its class and, when it needs an
optional package, the module that package provides. Nothing is imported until
a suite is asked for, so ``libero`` is listed everywhere but imported only
where it is asked for and installed::

    suite_names()                          # ['toy', 'tabletop', 'bimanual', 'libero']
    available_suites()                     # ['toy', 'tabletop', 'bimanual'] without the libero extra
    suite = make_suite("tabletop", image_size=64)

A new suite adds one line to :data:`SUITES`; ``tests/test_suite_contract.py``
then runs the suite contract (:mod:`vla_grpo.envs.base`) over it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Suite


@dataclass(frozen=True)
class SuiteEntry:
    """Where a registered suite lives and what it needs.

    Attributes:
        path: ``"module:Class"`` of the suite class.
        requires: a module an optional package provides (``None``: nothing beyond the project's).
        install: how to get ``requires`` (shown when it is missing).
    """

    path: str
    requires: str | None = None
    install: str = ""


SUITES: dict[str, SuiteEntry] = {
    "toy": SuiteEntry("vla_grpo.envs.toy:ToyReachSuite"),
    "tabletop": SuiteEntry("vla_grpo.envs.tabletop:TabletopSuite"),
    "bimanual": SuiteEntry("vla_grpo.envs.bimanual:BimanualSuite"),
    "libero": SuiteEntry("vla_grpo.envs.libero:LiberoSuite", requires="libero.libero",
                         install="pip install -e '.[libero]'"),
}


def suite_names() -> list[str]:
    """Every registered suite, installed or not, in registration order."""
    return list(SUITES)


def _entry(name: str) -> SuiteEntry:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; expected one of {suite_names()}")
    return SUITES[name]


def _missing(entry: SuiteEntry) -> str | None:
    """Why ``entry``'s optional package can't be imported, or None when it can (or needs none)."""
    if entry.requires is None:
        return None
    try:
        importlib.import_module(entry.requires)
    except ImportError as err:
        return str(err)
    return None


def available_suites() -> list[str]:
    """The registered suites whose optional packages import here."""
    return [name for name, entry in SUITES.items() if _missing(entry) is None]


def suite_class(name: str) -> type[Suite]:
    """The class of suite ``name``, imported now.

    Raises:
        ValueError: ``name`` is not registered (one line, listing the names).
        ImportError: the suite's optional package is missing (one line, saying how to install it).
    """
    entry = _entry(name)
    missing = _missing(entry)
    if missing is not None:
        raise ImportError(f"suite {name!r} needs {entry.requires}: {entry.install} ({missing})")
    module, _, cls = entry.path.partition(":")
    return getattr(importlib.import_module(module), cls)


def make_suite(name: str, **kwargs) -> Suite:
    """Suite ``name`` built with ``kwargs`` (its constructor's arguments)."""
    return suite_class(name)(**kwargs)
