"""Bit-packing helpers: every ``pack_*`` has an exact ``unpack_*`` inverse, one module per family."""

from .int4 import (
    TINYGEMM_CPU_LAYOUTS,
    pack_int4_nibbles,
    pack_tinygemm_cpu,
    tinygemm_cpu_layout,
    unpack_int4_nibbles,
    unpack_tinygemm_cpu,
)
from .int4_vnni import pack_vnni_int4, unpack_vnni_int4

__all__ = [
    "TINYGEMM_CPU_LAYOUTS",
    "pack_int4_nibbles",
    "unpack_int4_nibbles",
    "pack_tinygemm_cpu",
    "unpack_tinygemm_cpu",
    "tinygemm_cpu_layout",
    "pack_vnni_int4",
    "unpack_vnni_int4",
]
