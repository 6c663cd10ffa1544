"""A pickle module for ``torch.load(..., pickle_module=restricted_pickle)`` that never runs a file's code.

Why: a released Lightning ``.ckpt`` is a pickle, and besides its tensors it carries objects
(``hyper_parameters``, callback and loop states) that ``torch.load(weights_only=True)`` refuses. Full
unpickling would import and call whatever the file names, which is running the file's code. Here every
global the pickle names is looked up by name only, and falls into one of three kinds:

* **admitted**, the real object: torch's tensor and storage rebuild functions, ``torch.Size``, dtypes,
  ``torch.device``, ``collections.OrderedDict``, builtin containers and plain values, ``_codecs.encode``
  (how protocol 2 spells ``bytes``). Calling them builds data, nothing else.
* **refused** (:class:`RefusedGlobal`): globals of the modules that exist to run commands, code or imports
  (``os``/``posix``, ``subprocess``, ``sys``, ``builtins`` beyond the admitted names such as ``eval``,
  ``exec``, ``getattr``, ``__import__``, ``importlib``, ``runpy``, …). No checkpoint needs them, so a file
  that names one is treated as hostile and not read around.
* anything else becomes an **opaque stand-in** (:class:`Opaque`): a fresh class that records the qualified
  name, while constructing it, calling it and giving it state (``__setstate__``, items, appends) are all
  swallowed. The real class is never imported, so neither its module's code nor its ``__init__`` or
  ``__setstate__`` runs; what such objects held is lost, which is fine: only the tensors are wanted.

The safety rests on nothing outside the admitted table ever being imported or called, not on the refused
list, which only decides between reading around an unknown object and refusing the whole file.
"""

from __future__ import annotations

import _codecs
import _compat_pickle
import collections
import pickle
from collections.abc import Iterator
from typing import IO, Any, ClassVar

import torch

_TORCH_REBUILDERS = (
    torch._utils._rebuild_tensor,
    torch._utils._rebuild_tensor_v2,
    torch._utils._rebuild_tensor_v3,
    torch._utils._rebuild_parameter,
)
_BUILTIN_VALUES = (dict, list, tuple, set, frozenset, int, float, complex, bool, str, bytes, bytearray, slice, range)
_ADMITTED: dict[tuple[str, str], Any] = {
    **{("torch._utils", f.__name__): f for f in _TORCH_REBUILDERS},
    **{("torch", name): value for name, value in vars(torch).items() if isinstance(value, torch.dtype)},
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _codecs.encode,
    **{("builtins", t.__name__): t for t in _BUILTIN_VALUES},
}
_SYSTEM_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "builtins", "importlib", "runpy", "ctypes", "pickle", "_pickle",
    "marshal", "code", "codeop", "pty", "shutil", "socket", "webbrowser", "operator", "types", "multiprocessing",
})


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global that exists to run commands, code or imports."""

    def __init__(self, qualified_name: str) -> None:
        super().__init__(f"the pickle asks for {qualified_name}")
        self.qualified_name = qualified_name


class Opaque:
    """Stand-in for an object of a class that was not loaded; ``qualified_name`` says which.

    Every way pickle builds an object (``cls.__new__``, a call, ``__setstate__``, items, appends) lands
    here and is swallowed."""

    qualified_name: ClassVar[str] = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<not loaded: {self.qualified_name}>"


class Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits, refuses or stands in (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stand_ins: dict[str, type[Opaque]] = {}

    def find_class(self, module: str, name: str) -> Any:
        # protocol 2 (torch.save's) writes Python 2 names, e.g. __builtin__.set: what pickle's own find_class maps
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        admitted = _ADMITTED.get((module, name))
        if admitted is not None:
            return admitted
        qualified = f"{module}.{name}"
        if module.split(".")[0] in _SYSTEM_MODULES:
            raise RefusedGlobal(qualified)
        if qualified not in self._stand_ins:
            self._stand_ins[qualified] = type("Opaque", (Opaque,), {"qualified_name": qualified})
        return self._stand_ins[qualified]


def load(file: IO[bytes], **kwargs: Any) -> Any:
    """``pickle.load`` through :class:`Unpickler` (torch's legacy format reads its headers with it)."""
    return Unpickler(file, **kwargs).load()


def opaque_names(obj: Any) -> list[str]:
    """Sorted qualified names of the stand-ins anywhere in ``obj`` (dicts, lists, tuples and sets)."""
    return sorted({item.qualified_name for item in _walk(obj) if _is_opaque(item)})


def _is_opaque(item: Any) -> bool:
    return isinstance(item, Opaque) or (isinstance(item, type) and issubclass(item, Opaque))


def _walk(obj: Any) -> Iterator[Any]:
    stack, seen = [obj], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
