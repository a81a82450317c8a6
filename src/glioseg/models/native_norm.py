"""GroupNorm on channels-last CPU tensors as two native calls: a forward and a backward in C++
(``native_norm.cpp``), built on this machine the first time it is needed.

Why: at SegResNet's small levels (64×24³, 128×12³ at a 96³ patch) PyTorch's contiguous GroupNorm
takes 0.1-0.4 ms, and ``fast_norm``'s forms, made of PyTorch operators and compiled passes, spend
0.3-0.5 ms per layer in Python, Dynamo's call path and a dozen few-element operators before any
voxel is touched (64×24³ bf16, one thread, Zen 4: sums 151 µs + pass 220 µs of a 657 µs backward).
Here each direction is one call: the per-channel sums (fp32 in blocks, added in fp64), the group
statistics and coefficients, and one pass over the voxels, in PyTorch's maths
(``group_norm_kernel.cpp``). ``kernel_choice`` measures it beside the other forms and PyTorch's
kernel, so it runs only where it is faster.

The library is compiled with ``g++ -O3 -march=native -fopenmp`` (``CXX`` overrides the compiler)
into a cache folder (``GLIOSEG_CACHE_DIR``, default ``~/.cache/glioseg``) under a name made of the
source, the compiler and this CPU's instruction-set flags, so a cache shared between machines never
hands one CPU another's code. Its OpenMP is PyTorch's own ``libgomp`` (same soname, already loaded),
so it shares PyTorch's threads; it runs ``torch.get_num_threads()`` of them. Where no compiler
works, where the result disagrees with ``F.group_norm`` on a probe, or where ``GLIOSEG_COMPILE=0``,
:func:`available` is False and the form is simply not offered.

The autograd around the two calls is a C++ operator, ``torch.ops.glioseg_native.group_norm``
(``native_norm_op.cpp``, a ``torch::autograd::Function`` that reaches the library through two
function pointers): at 128×12³ a call is 0.1-0.2 ms, and the same autograd in Python (checks,
allocations, an ``autograd.Function`` and its node) cost 10-25 µs a call hot and more cold. It is
compiled against the installed PyTorch's headers (``-O2``, ~15 s) once per PyTorch, compiler and
source, into the same cache folder, and loaded once per process; where it cannot be built (no
headers, an older compiler) or with ``GLIOSEG_NATIVE_OP=0``, :class:`_NativeGroupNormFn` does the
same in Python, with bitwise the same results. ``torch_forward`` takes the forward from PyTorch's
own kernel (``aten.native_group_norm``, same statistics) and only the backward from the library.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from glioseg.models import compiled_pass

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native_norm.cpp")
OP_SOURCE = Path(__file__).with_name("native_norm_op.cpp")
CACHE_ENV = "GLIOSEG_CACHE_DIR"
DTYPES = (torch.float32, torch.bfloat16)
_ABI = 3
_OP_ABI = 1
OP_ENV = "GLIOSEG_NATIVE_OP"   # 0: the Python form of the autograd (tests, comparisons)
_FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17")


def _cpu_flags() -> str:
    """This CPU's model and instruction-set flags (Linux), part of the library's name."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return os.uname().machine
    wanted = ("model name", "flags")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))


def _compiler() -> str:
    return os.environ.get("CXX", "g++")


def _cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "glioseg") / "native"


def _key(*parts: str) -> str:
    compiler = _compiler()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    return hashlib.sha256("\0".join([compiler, version, *parts]).encode()).hexdigest()[:16]


def library_path() -> Path:
    """Where the library built for this source, compiler and CPU lives (built or not)."""
    return _cache_root() / f"groupnorm-{_key(SOURCE.read_text(), ' '.join(_FLAGS), _cpu_flags())}.so"


def op_path() -> Path:
    """Where the autograd operator built for this source, compiler and PyTorch lives (not per CPU:
    it only calls the library)."""
    return _cache_root() / f"groupnorm-op-{_key(OP_SOURCE.read_text(), ' '.join(_op_flags()), torch.__version__)}.so"


def _op_flags() -> tuple[str, ...]:
    """PyTorch's headers (as system headers: their warnings are not ours), libraries and C++ ABI."""
    root = Path(torch.__file__).parent
    lib = root / "lib"
    return ("-O2", "-shared", "-fPIC", "-std=c++17", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            "-isystem", str(root / "include"), "-isystem", str(root / "include" / "torch" / "csrc" / "api" / "include"),
            f"-L{lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{lib}")


def _compile(source: Path, flags: tuple[str, ...], path: Path) -> Path:
    """Compile ``source`` to ``path`` (atomically: a half-written file never has its name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        tmp = Path(scratch) / path.name
        result = subprocess.run([_compiler(), str(source), *flags, "-o", str(tmp)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{_compiler()} failed on {source.name}: {result.stderr.strip()[-500:]}")
        os.replace(tmp, path)
    return path


def build(path: Path) -> Path:
    """Compile the library to ``path``."""
    return _compile(SOURCE, _FLAGS, path)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, f64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    lib.glioseg_gn_forward.argtypes = [i32] + [p] * 6 + [i64] * 4 + [f64, i32]
    lib.glioseg_gn_backward.argtypes = [i32] + [p] * 8 + [i64] * 4 + [i32]
    return lib


@functools.lru_cache(maxsize=1)
def _loaded_op() -> bool:
    """Build (once per PyTorch) and load the autograd operator, once per process: a second library
    registering ``glioseg_native`` would be refused. False, with a warning, where it cannot be built:
    the Python form of the same calls runs."""
    path = op_path()
    try:
        if not path.exists():
            log.info("building the native GroupNorm's operator against PyTorch %s (once, ~15 s)", torch.__version__)
            _compile(OP_SOURCE, _op_flags(), path)
        torch.ops.load_library(str(path))
        if torch.ops.glioseg_native.abi() != _OP_ABI:
            raise RuntimeError(f"{path} was built from another version of {OP_SOURCE.name}")
    except Exception as exc:  # noqa: BLE001 - no headers, no compiler, a refused load: the Python form runs
        log.warning("the native GroupNorm's autograd operator is not available (%s: %s); its Python form runs",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return False
    return True


@functools.lru_cache(maxsize=1)
def _op():
    """``torch.ops.glioseg_native.group_norm`` calling this process's current library, or None where
    the operator is not available (or ``GLIOSEG_NATIVE_OP=0``)."""
    if os.environ.get(OP_ENV, "").strip() == "0" or not _loaded_op():
        return None
    torch.ops.glioseg_native.set_kernels(*(ctypes.cast(f, ctypes.c_void_p).value for f in _kernels()))
    return torch.ops.glioseg_native.group_norm


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL:
    path = library_path()
    if not path.exists():
        build(path)
    lib = ctypes.CDLL(str(path))
    if lib.glioseg_gn_abi() != _ABI:
        raise RuntimeError(f"{path} was built from another version of {SOURCE.name}")
    return _declare(lib)


@functools.lru_cache(maxsize=1)
def _kernels() -> tuple:
    """(forward, backward) of the library, looked up once (per call, a lookup by name cost a
    microsecond of the ~20 µs left around a call)."""
    lib = _library()
    return lib.glioseg_gn_forward, lib.glioseg_gn_backward


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _fp32(t: torch.Tensor | None) -> torch.Tensor | None:
    """γ or β as the library reads it: contiguous fp32 (no copy where it already is)."""
    if t is None or (t.dtype == torch.float32 and t.is_contiguous()):
        return t
    return t.detach().to(torch.float32).contiguous()


_TORCH_FORWARD = torch.ops.aten.native_group_norm


# At SegResNet's deepest level (128×12³, 0.1-0.2 ms a call) each microsecond of Python here is ~1 %
# of a GroupNorm: no views, no per-call lookups. (The library's own call takes ~4 µs on a tiny tensor.)
def _forward(x: torch.Tensor, groups: int, weight=None, bias=None, eps: float = 1e-5):
    """(y, mean, rstd) of GroupNorm on channels-last ``x`` (fp32 or bf16); mean, rstd (N, G) fp32.
    Unchecked: :func:`group_norm` checks shapes, dtypes and layout before the library reads memory."""
    n, channels = x.shape[0], x.shape[1]
    y = torch.empty_like(x)   # x is channels-last: its layout is kept
    mean, rstd = torch.empty(n, groups, dtype=torch.float32), torch.empty(n, groups, dtype=torch.float32)
    _kernels()[0](x.dtype == torch.bfloat16, x.data_ptr(), _ptr(_fp32(weight)), _ptr(_fp32(bias)), y.data_ptr(),
                  mean.data_ptr(), rstd.data_ptr(), n, x.numel() // (n * channels), channels, groups, eps,
                  torch.get_num_threads())
    return y, mean, rstd


def _torch_forward(x: torch.Tensor, groups: int, weight=None, bias=None, eps: float = 1e-5):
    """:func:`_forward` by PyTorch's own kernel (``aten.native_group_norm``, which returns the same
    statistics): at the small levels its channels-last forward can be the faster one while its
    channels-last backward is the slow one (128×12³, one thread, Zen 4: forward 0.06-0.07 ms against
    the library's 0.07-0.08; the choice measures both forms)."""
    n, channels = x.shape[0], x.shape[1]
    y, mean, rstd = _TORCH_FORWARD(x, weight, bias, n, channels, x.numel() // (n * channels), groups, eps)
    return y, mean.float(), rstd.float()   # bf16 statistics where there are no affine parameters


def _backward(dy, x, weight, mean, rstd, groups, needs=(True, True, True)):
    """(dx, dγ, dβ) of GroupNorm from the forward's fp32 statistics; None where not needed."""
    n, channels = x.shape[0], x.shape[1]
    if dy.dtype != x.dtype or not dy.is_contiguous(memory_format=torch.channels_last_3d):
        dy = dy.to(x.dtype).contiguous(memory_format=torch.channels_last_3d)
    dx = torch.empty_like(x) if needs[0] else None
    has_weight = weight is not None
    dw = torch.empty(channels, dtype=torch.float32) if has_weight and needs[1] else None
    db = torch.empty(channels, dtype=torch.float32) if has_weight and needs[2] else None
    _kernels()[1](x.dtype == torch.bfloat16, dy.data_ptr(), x.data_ptr(), _ptr(_fp32(weight)), mean.data_ptr(),
                  rstd.data_ptr(), _ptr(dx), _ptr(dw), _ptr(db), n, x.numel() // (n * channels), channels, groups,
                  torch.get_num_threads())
    if has_weight and weight.dtype != torch.float32:
        dw, db = (None if t is None else t.to(weight.dtype) for t in (dw, db))
    return dx, dw, db


class _NativeGroupNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps, torch_forward):
        y, mean, rstd = (_torch_forward if torch_forward else _forward)(x, groups, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.groups = groups
        return y

    @staticmethod
    @once_differentiable   # no double backward: the library has no derivatives of its own
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        return (*_backward(dy, x, weight, mean, rstd, ctx.groups, ctx.needs_input_grad), None, None, None)


def group_norm(x: torch.Tensor, groups: int, weight=None, bias=None, eps: float = 1e-5,
               torch_forward: bool = False) -> torch.Tensor:
    """GroupNorm through the library, with autograd; ``x`` channels-last fp32 or bf16 on the CPU.
    ``torch_forward``: the forward by PyTorch's kernel, only the backward by the library."""
    if x.dtype not in DTYPES or x.dim() != 5 or x.device.type != "cpu" or x.shape[1] % groups:
        raise ValueError(f"native GroupNorm takes a 5-D fp32 / bf16 CPU tensor with channels divisible "
                         f"by {groups} groups, got {tuple(x.shape)} {x.dtype} on {x.device}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != (x.shape[1],):
            raise ValueError(f"native GroupNorm: {name} of shape {tuple(t.shape)} for {x.shape[1]} channels")
    x = x.contiguous(memory_format=torch.channels_last_3d)
    op = _op()
    if op is not None:
        return op(x, weight, bias, groups, eps, torch_forward)
    return _NativeGroupNormFn.apply(x, weight, bias, groups, eps, torch_forward)


def _probe() -> bool:
    """Build, load and check the library (forward and input gradient) against ``F.group_norm`` on a
    small tensor."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 3, 4, 5, generator=generator).contiguous(memory_format=torch.channels_last_3d)
    weight, bias = torch.randn(6, generator=generator), torch.randn(6, generator=generator)
    grad = torch.randn(x.shape, generator=generator)

    def run(fn, t):
        t = t.detach().requires_grad_()
        y = fn(t, 3, weight, bias)
        return y.detach(), torch.autograd.grad(y, t, grad)[0]
    try:
        with torch.enable_grad():
            ours = [run(functools.partial(group_norm, torch_forward=own), x) for own in (False, True)]
    except Exception as exc:  # noqa: BLE001 - any build or load failure means "not offered here"
        log.warning("the native GroupNorm is not available on this machine (%s: %s); using the other forms",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return False
    with torch.enable_grad():
        want = run(F.group_norm, x.contiguous())
    close = all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for pair in ours for a, b in zip(pair, want))
    if not close:
        log.warning("the native GroupNorm disagrees with F.group_norm on this machine; not using it")
    return close


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether the native GroupNorm works here (built once per machine, probed once per process;
    ``GLIOSEG_COMPILE=0``: no)."""
    return not compiled_pass.switched_off() and _probe()
