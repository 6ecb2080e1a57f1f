"""autodistil: AutoDistil (few-shot task-agnostic NAS for distilling BERT) as a kernel engine.

Importing never touches a GPU; optional backends (Triton, CUDA) load lazily.
"""
from .space import PAPER_SPACES, Range, SearchSpace, SubnetConfig, TeacherShape, derive_spaces
from .cost import exact_cost, paper_cost

__version__ = "0.1.0"

try:  # register the AutoDistilBert classes with transformers' Auto* factories
    from .nn.hf import register as _register
    _register()
except ImportError:  # transformers missing: the rest of the package still imports
    pass

__all__ = ["PAPER_SPACES", "Range", "SearchSpace", "SubnetConfig", "TeacherShape", "derive_spaces",
           "exact_cost", "paper_cost", "__version__"]
