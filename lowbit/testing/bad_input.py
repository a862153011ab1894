"""Bad-input helpers for lowbit's tests (the bad-input matrix mixin joins them below).

``misaligned(t)`` gives a copy of ``t`` whose data pointer is 8 bytes off the allocator's
64-byte boundary, what a safetensors file can hand back. ``run_isolated(code)`` runs
Python code in a fresh interpreter so that a segfaulting kernel fails one test instead
of killing the test run.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

__all__ = ["misaligned", "run_isolated"]

# safetensors aligns tensor data to 8 bytes; 8 is the offset that real files produce.
MISALIGN_BYTES = 8


def misaligned(t: torch.Tensor, offset: int = MISALIGN_BYTES) -> torch.Tensor:
    """A contiguous copy of ``t`` whose data pointer is ``offset`` bytes past a 64-byte boundary."""
    nbytes = t.numel() * t.element_size()
    raw = torch.empty(nbytes + 64 + offset, dtype=torch.uint8, device=t.device)
    start = (-raw.data_ptr()) % 64 + offset  # first byte at 64k + offset
    out = raw[start:start + nbytes].view(t.dtype).view(t.shape)
    out.copy_(t)
    return out


def run_isolated(code: str, env: dict[str, str] | None = None, timeout: float = 300.0) -> subprocess.CompletedProcess:
    """Run ``code`` with this interpreter in a subprocess (cwd and ``sys.path`` kept)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=timeout
    )
