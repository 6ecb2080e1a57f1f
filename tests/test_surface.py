"""The backend contract in code: every backend's launchers satisfy the Protocols, and one helper builds
every backend's op surface (a launcher that lacks a method is refused by name)."""

import importlib

import pytest

from autodistil.ops.surface import LayerNormLaunchers, LinearLaunchers, launcher_methods, op_surface

BACKENDS = {
    "torch": ("autodistil.ops.torch_backend", "_TorchLinear", "_TorchLayerNorm"),
    "triton": ("autodistil.kernels", None, None),
    "cuda": ("autodistil.ops.cuda_backend", "_CudaLinear", "_CudaLayerNorm"),
}


@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_backend_builds_its_ops_from_launchers_of_the_contract(name):
    mod_name, lin, ln = BACKENDS[name]
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        pytest.skip(f"{name}: {e}")
    if name == "triton":
        lin_mod, ln_mod = (
            importlib.import_module(f"autodistil.kernels.{m}") for m in ("sliced_linear", "sliced_layernorm")
        )
        linear, layernorm = lin_mod._TritonLinear, ln_mod._TritonLayerNorm
    else:
        linear, layernorm = getattr(mod, lin), getattr(mod, ln)
    assert isinstance(linear, LinearLaunchers) and isinstance(layernorm, LayerNormLaunchers)
    ops = mod.OPS
    for op in (
        "sliced_linear",
        "sliced_qkv",
        "sliced_layernorm",
        "sliced_linear_layernorm",
        "sliced_ffn_layernorm",
    ):
        assert getattr(mod, op) is getattr(ops, op)
    assert set(ops.functions) == {"linear", "qkv", "layernorm", "linear_layernorm", "ffn_layernorm"}


def test_a_launcher_missing_a_method_is_refused_by_name():
    class Half:
        check = staticmethod(lambda *a: None)
        forward = staticmethod(lambda *a: None)

    assert launcher_methods(LinearLaunchers) == ["check", "forward", "gelu_backward", "dx", "accumulate_dw"]
    with pytest.raises(
        TypeError, match="backend 'x': Half is not LinearLaunchers: it lacks gelu_backward, dx, accumulate_dw"
    ):
        op_surface("x", Half, Half, linear_otherwise=None)
