"""lowbit's kernels as ``torch.library`` custom ops (namespace ``lowbit``).

``library.py`` defines every schema and fake impl, ``reference.py`` the pure-PyTorch
implementation of every op (registered for all devices), and ``cpu.py`` / ``cuda.py`` /
``xpu.py`` the per-device kernels (xpu: untested on hardware), which the dispatcher picks
by the inputs' device. Each device module imports ``library`` and ``reference`` first, so
every op is defined before any kernel registers for it.
"""

from . import (  # noqa: F401  (registering is the import's effect)
    cpu,
    cuda,
    library,
    reference,
    triton_int4,  # noqa: F401,E402  (Triton int4 op + Marlin CUDA kernel; triton imported on use)
    xpu,
)
