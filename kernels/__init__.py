"""Triton kernels (installed as autodistil.kernels)."""


def unavailable_reason():
    return "the Triton backend is not built yet"
