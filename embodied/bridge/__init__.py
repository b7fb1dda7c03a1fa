"""Deprecated alias of `embodied.sim2real` (the design card's name), kept for one release.

`import embodied.bridge.robot` returns the very module `embodied.sim2real.robot` (one
module object under two names, so classes and isinstance checks agree).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

warnings.warn("embodied.bridge is now embodied.sim2real; the old name goes in the next "
              "release", DeprecationWarning, stacklevel=2)

_OLD, _NEW = __name__, "embodied.sim2real"


class _AliasLoader(importlib.abc.Loader):
    def create_module(self, spec):
        module = importlib.import_module(_NEW + spec.name[len(_OLD):])
        self._real_spec = module.__spec__
        return module

    def exec_module(self, module) -> None:  # the real module already ran
        module.__spec__ = self._real_spec  # importlib set the alias's spec on it


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(_OLD + "."):
            return None
        if importlib.util.find_spec(_NEW + fullname[len(_OLD):]) is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader())


if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _AliasFinder())

__all__ = importlib.import_module(_NEW).__all__


def __getattr__(name: str):
    """`embodied.bridge.make_transport` and friends: the new package's attributes."""
    return getattr(importlib.import_module(_NEW), name)
