"""autodistil: AutoDistil (few-shot task-agnostic NAS for distilling BERT-style models) as a kernel engine.

Importing registers the exported-student class (``autodistil_bert``) with transformers' Auto*
factories, so such folders load with ``AutoModel.from_pretrained`` after ``import autodistil``; it
loads nothing else (no model, no kernels, no GPU): the names below load on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "PAPER_SPACES": "space",
    "Range": "space",
    "SearchSpace": "space",
    "SubnetConfig": "space",
    "TeacherShape": "space",
    "derive_spaces": "space",
    "exact_cost": "cost",
    "paper_cost": "cost",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'autodistil' has no attribute {name!r}")


try:  # register the AutoDistilBert classes with transformers' Auto* factories
    from .hf_student import register as _register

    _register()
except ImportError:  # transformers missing: the rest of the package still imports
    pass
