"""Every Triton kernel compiles for the GPUs we run on (sm_90: H100/H200; sm_80: A100), without a GPU.

triton's interpreter (test_accel_kernels) checks what the kernels compute, but not that they compile: a kernel that
fails to compile on the device would make the start-up check fall back to the eager ops, silently slow.
Triton ships ptxas, so the whole compile to a cubin runs here. Each kernel is compiled with the constants and
integer specialisations (divisible by 16, as every SD shape is) that the wrappers launch it with, and its
cubin's resources are checked: no more than a few bytes of stack (register spills), 16-byte vector memory
accesses in the memory-bound kernels, and the GEGLU matmul pipelined (cp.async) on tensor cores (wgmma).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import pytest

triton = pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

_FP32_POINTERS = {"mean_ptr", "m2_ptr", "stats_ptr"}
# the memory-bound kernels over whole activations: 16-byte vector loads and stores (8 fp16 per instruction),
# not one 2-byte access per element (an integer excluded from specialisation can silently prevent them)
_VECTORISED = {"nhwc_apply", "bias_residual", "layer_norm_1280", "layer_norm_320", "geglu", "group_partial"}
_FLOATS = {"eps", "scale"}


def _kernels() -> dict[str, tuple[object, dict[str, object], dict[str, int]]]:
    """name -> (kernel, constexpr values, launch options), as the wrappers launch them."""
    from sd2_app.accel.kernels import elementwise as k
    from sd2_app.accel.kernels import group_norm as gn
    from sd2_app.accel.kernels import group_norm_nchw as nchw

    return {
        "group_partial": (nchw._group_partial_kernel, {"CHUNK": nchw._CHUNK, "BLOCK": nchw._BLOCK}, {}),
        "group_norm_silu": (nchw._group_norm_silu_kernel, {"APPLY_SILU": True, "CHUNK": nchw._CHUNK,
                                                           "BLOCK": nchw._BLOCK, "CHUNKS_POW2": 16}, {}),
        "nhwc_partial": (gn._nhwc_partial_kernel, {"BLOCK_HW": gn._NHWC_BLOCK_HW, "BLOCK_C": gn._NHWC_BLOCK_C}, {}),
        "nhwc_stats": (gn._nhwc_stats_kernel, {"BLOCK": gn._STATS_BLOCK}, {"num_warps": gn._STATS_WARPS}),
        "nhwc_apply": (gn._nhwc_apply_kernel, {"APPLY_SILU": True, "BLOCK_HW": gn._NHWC_APPLY_HW,
                                               "BLOCK_C": gn._NHWC_BLOCK_C}, {}),
        "bias_residual": (k._bias_residual_kernel, {"BLOCK": k._RESIDUAL_BLOCK}, {}),
        "layer_norm_1280": (k._layer_norm_kernel, {"BLOCK_R": 1, "BLOCK_C": 2048}, {}),
        "layer_norm_320": (k._layer_norm_kernel, {"BLOCK_R": 4, "BLOCK_C": 512}, {}),
        "geglu": (k._geglu_kernel, {"BLOCK": k._GEGLU_BLOCK}, {}),
    }


def _compile(kernel, constexprs: dict[str, object], options: dict[str, int], capability: int):
    signature, attrs = {}, {}
    for index, param in enumerate(kernel.params):
        name = param.name
        if param.is_constexpr:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*fp32" if name in _FP32_POINTERS else "*fp16"
            attrs[(index,)] = [["tt.divisibility", 16]]  # torch's allocations are 16-byte aligned
        elif name in _FLOATS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name not in kernel.do_not_specialize:
                attrs[(index,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)


def _stack_bytes(cubin: bytes) -> int:
    import triton.backends.nvidia as nvidia

    tool = os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        usage = subprocess.run([tool, "-res-usage", file.name], capture_output=True, text=True, check=True).stdout
    return max(int(m) for m in re.findall(r"STACK:(\d+)", usage))


pytestmark = pytest.mark.slow  # Triton compiles every kernel for two GPU targets on the CPU


@pytest.mark.parametrize("capability", [90, 80])
@pytest.mark.parametrize("name", sorted(_kernels()))
def test_kernel_compiles_for_the_gpu_without_spilling(name: str, capability: int) -> None:
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's default; set to quiet its warning
    kernel, constexprs, options = _kernels()[name]
    compiled = _compile(kernel, constexprs, options, capability)
    assert _stack_bytes(compiled.asm["cubin"]) <= 32, name  # a few spilled registers at most
    ptx = compiled.asm["ptx"]
    if name in _VECTORISED:
        assert "ld.global.v4" in ptx and ("st.global.v4" in ptx or name == "group_partial"), name
    if name == "bias_residual":
        assert "ld.global.b16" not in ptx  # the biases too: every access is a vector
    if name == "nhwc_partial":
        assert "ld.global.v4" in ptx  # the tile loads (the shift loads are per channel)
