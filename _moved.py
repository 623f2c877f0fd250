"""Old module paths of code that moved in the layout change (tasks/ split by concern), kept importable.

Configs, checkpoints and scripts written before the move name classes by their old paths: YAML ``class_path:
omnifuse.tasks.finetune.FinetuneSchedule``, and a checkpoint's pickled hyper-parameters ``omnifuse.tasks.lora.LoRAConfig``.
A meta-path finder answers an import of an old path with a module whose attributes come from the new home(s), so
``jsonargparse`` and ``pickle`` (both: import the module, then ``getattr``) find the same objects. Nothing is imported
until an old path is used, and new code never uses these names (tests/test_layout.py checks both).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

#: old module -> the modules that now hold its names, searched in order.
MOVED: dict[str, tuple[str, ...]] = {
    "omnifuse.tasks.cli": ("omnifuse.app.cli",),
    "omnifuse.tasks.writer": ("omnifuse.app.writer",),
    "omnifuse.tasks.score": ("omnifuse.app.score",),
    "omnifuse.tasks.plots": ("omnifuse.app.plots",),
    "omnifuse.tasks.predict": ("omnifuse.tasks.inference", "omnifuse.app.predictor"),
    "omnifuse.tasks.lora": ("omnifuse.finetune.lora",),
    "omnifuse.tasks.finetune": (
        "omnifuse.finetune.freezing",
        "omnifuse.finetune.weights",
        "omnifuse.finetune.setup",
        "omnifuse.tasks.strategies",
    ),
}
#: old package prefix -> new package prefix (every submodule moved with it).
MOVED_PACKAGES: dict[str, str] = {"omnifuse.tasks.structured": "omnifuse.schema"}


def new_home(old: str) -> tuple[str, ...] | None:
    """The module(s) that now hold what ``old`` held, or None when ``old`` did not move."""
    if old in MOVED:
        return MOVED[old]
    for prefix, new in MOVED_PACKAGES.items():
        if old == prefix or old.startswith(prefix + "."):
            return (new + old[len(prefix) :],)
    return None


class _MovedModule(types.ModuleType):
    def __init__(self, name: str, targets: tuple[str, ...]) -> None:
        super().__init__(name, f"Moved: now {', '.join(targets)}.")
        self.__moved_to__ = targets

    def __getattr__(self, attr: str):
        for target in self.__moved_to__:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"{self.__name__!r} moved to {' / '.join(self.__moved_to__)}, which have no {attr!r}")


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    # First on sys.meta_path: otherwise the path finder would load a second copy of, say, schema/compiler.py under
    # the old name omnifuse.tasks.structured.compiler (its parent alias carries schema/'s __path__).
    def __init__(self) -> None:
        self._real_specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def find_spec(self, fullname, path=None, target=None):
        targets = new_home(fullname)
        if targets is None:
            return None
        if len(targets) == 1 and fullname not in MOVED:  # a moved package's module: the real module object itself
            return importlib.machinery.ModuleSpec(fullname, self, is_package=False)
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        targets = new_home(spec.name)
        if spec.name not in MOVED:
            real = importlib.import_module(targets[0])  # the same object: isinstance and identity keep holding
            self._real_specs[spec.name] = real.__spec__
            return real
        return _MovedModule(spec.name, targets)

    def exec_module(self, module) -> None:
        # The import system stamped the alias spec on the real module; give it back its own.
        real_spec = self._real_specs.pop(getattr(module.__spec__, "name", ""), None)
        if real_spec is not None:
            module.__spec__ = real_spec


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
