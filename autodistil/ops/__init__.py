"""The ops layer: the one dispatch point for sliced ops (``dispatch``), the torch backend
(``torch_backend``), the bindings of the CUDA extension (``cuda_backend``), and below them the
pieces every backend shares (``shared``). The Triton kernels live in ``autodistil.kernels``."""

from .dispatch import (
    BACKENDS,
    BackendUnavailable,
    backend_module,
    backend_status,
    get_backend,
    sliced_attention,
    sliced_embedding,
    sliced_ffn_layernorm,
    sliced_layernorm,
    sliced_linear,
    sliced_linear_layernorm,
    sliced_qkv,
    use_backend,
)

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "backend_module",
    "backend_status",
    "get_backend",
    "sliced_attention",
    "sliced_embedding",
    "sliced_ffn_layernorm",
    "sliced_layernorm",
    "sliced_linear",
    "sliced_linear_layernorm",
    "sliced_qkv",
    "use_backend",
]
