"""lowbit's kernels as ``torch.library`` custom ops (namespace ``lowbit``).

``library.py`` defines every schema and fake impl, ``reference.py`` the pure-PyTorch
implementation of every op (registered for all devices), and ``cpu.py`` / ``cuda.py`` /
``xpu.py`` the per-device kernels, which the dispatcher picks by the inputs' device.
"""

from . import library, reference  # noqa: F401  (define ops, then the default kernels)
from . import cpu, cuda  # noqa: F401,E402  (device kernels override the reference)
from . import xpu  # noqa: F401,E402  (Intel GPU kernels; untested on hardware)
from . import triton_int4  # noqa: F401,E402  (Triton int4 op + Marlin CUDA kernel; triton imported on use)
