"""Write the golden checkpoints in tests/golden/: one per format in lowbit's format registry.

    python tests/golden/make_golden.py            # (re)write every golden file
    python tests/golden/make_golden.py int8_weight_only   # only these formats

For each format, ``<format>_v<version>.safetensors`` is what ``lowbit.save_file`` writes
for a [64, 256] weight in that format (device int4 layouts save as the portable
``int4_plain``) plus an input ``x``; ``<format>_v<version>.expected.safetensors`` holds
what loading it must give back bit for bit: the packed fields (or, for layouts that
depend on the CPU, the unpacked codes and qparams), the dequantized weight (its sha256
in the metadata), and the
linear output (``y``: the format's own CPU kernel where it has one, else the reference
``x @ dequantize().T``). tests/test_golden.py loads them.

Regenerate only when a change is meant to alter stored data; bump the format's
``format_version`` (and register a converter) when old files must keep loading.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import lowbit
from lowbit.tensors.base import LowbitTensor, format_registry

HERE = Path(__file__).parent
SHAPE = (64, 128)  # N, K: every format's constraints hold (tiles of 16/64, K % 128 == 0)
GROUP = 64
DTYPE = torch.bfloat16


def golden_weight() -> torch.Tensor:
    """A deterministic bf16 weight (no RNG: sin of the index, so any torch makes the same one)."""
    i = torch.arange(SHAPE[0] * SHAPE[1], dtype=torch.float64).reshape(SHAPE)
    return (torch.sin(i * 0.37) * 0.05 + torch.cos(i * 0.011) * 0.02).to(DTYPE)


def golden_input() -> torch.Tensor:
    i = torch.arange(3 * SHAPE[1], dtype=torch.float64).reshape(3, SHAPE[1])
    return torch.sin(i * 0.53).to(DTYPE)


def _plain(zero_point_kind: str) -> lowbit.Int4PlainTensor:
    return lowbit.Int4PlainTensor.from_float(golden_weight(), group_size=GROUP, zero_point_kind=zero_point_kind)


def _from_plain(cls, plain: lowbit.Int4PlainTensor) -> LowbitTensor:
    codes, scale, zero = plain.to_codes()
    return cls.from_codes(codes, scale, zero, group_size=plain.group_size, shape=tuple(plain.shape), dtype=plain.dtype)


# format_name -> (build the tensor from the golden weight, rebuild it from the loaded checkpoint tensor)
# For int4 layouts the checkpoint holds Int4PlainTensor; the rebuild packs its codes again.
BUILDERS = {
    "float_cast": (lambda: lowbit.FloatCastTensor.from_float(golden_weight(), torch.bfloat16), None),
    "int4_plain": (lambda: _plain("float"), None),
    "int4_tinygemm_cpu": (lambda: _from_plain(lowbit.Int4TinygemmCpuTensor, _plain("float")),
                          lambda t: _from_plain(lowbit.Int4TinygemmCpuTensor, t.to_checkpoint())),
    "int4_tiled_cuda": (lambda: _from_plain(lowbit.Int4TiledCudaTensor, _plain("float")),
                        lambda t: _from_plain(lowbit.Int4TiledCudaTensor, t.to_checkpoint())),
    "int4_marlin": (lambda: _from_plain(lowbit.Int4MarlinTensor, _plain("int")),
                    lambda t: _from_plain(lowbit.Int4MarlinTensor, t.to_checkpoint())),
    "int4_xpu": (lambda: _from_plain(lowbit.Int4XpuTensor, _plain("int")),
                 lambda t: _from_plain(lowbit.Int4XpuTensor, t.to_checkpoint())),
    "int4_xpu_float_zp": (lambda: _from_plain(lowbit.Int4XpuFloatZpTensor, _plain("float")),
                          lambda t: _from_plain(lowbit.Int4XpuFloatZpTensor, t.to_checkpoint())),
    "int4_vnni_cpu": (lambda: lowbit.Int4VnniCpuTensor.from_float(golden_weight(), group_size=GROUP), None),
    "int8_weight_only": (lambda: lowbit.Int8Tensor.from_float(golden_weight()), None),
    "int8_dynamic_act_int8_weight": (lambda: lowbit.Int8DynActTensor.from_float(golden_weight()), None),
    "int4_triton_cuda": (lambda: _from_plain(lowbit.Int4TritonCudaTensor, _plain("float")),
                         lambda t: _from_plain(lowbit.Int4TritonCudaTensor, t.to_checkpoint())),
    "float8_weight_only": (lambda: lowbit.Float8Tensor.from_float(golden_weight()), None),
    "float8_dynamic_act_float8_weight": (lambda: lowbit.Float8DynActTensor.from_float(golden_weight()), None),
    "float8_dynamic_act_float8_weight_per_tensor": (
        lambda: lowbit.Float8DynActPerTensorTensor.from_float(golden_weight()), None),
}

# Formats whose kernel runs on CPU: y is F.linear through that kernel (tolerance in the
# test: accumulation order differs between CPUs). Others: the reference x @ W^T.
CPU_KERNEL = {"float_cast", "int4_tinygemm_cpu", "int4_vnni_cpu", "int8_weight_only",
              "int8_dynamic_act_int8_weight"}


def file_stem(cls) -> str:
    return f"{cls.format_name}_v{cls.format_version}"


def expected_of(name: str, t: LowbitTensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a loaded golden tensor must give: stored fields (or codes), dequantized weight, output."""
    out: dict[str, torch.Tensor] = {}
    if "cpu_layout" in t.meta_fields:  # packed bytes depend on the CPU (AVX512 vs AVX2): compare the codes
        codes, scale, zero = t.to_codes()
        out.update({"codes": codes, "scale": scale, "zero_point": zero})
    else:
        for f in t.data_fields:
            v = getattr(t, f)
            if v is not None:
                out[f"field.{f}"] = v.contiguous()
    with torch.no_grad():
        out["y"] = F.linear(x, t) if name in CPU_KERNEL else F.linear(x.float(), t.dequantize().float()).to(x.dtype)
    return out


def digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (the dequantized weight is checked this way)."""
    import hashlib

    t = t.detach().contiguous().cpu()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def make(names=None) -> list[Path]:
    from safetensors.torch import save_file

    written = []
    missing = sorted(set(format_registry) - set(BUILDERS))
    if missing:
        raise SystemExit(f"make_golden.py has no builder for formats {missing}; add one to BUILDERS")
    x = golden_input()
    for name in names or sorted(format_registry):
        cls = format_registry[name]
        t = BUILDERS[name][0]()
        if type(t) is not cls:
            raise SystemExit(f"builder for {name} made {type(t).__name__}, expected {cls.__name__}")
        stem = file_stem(cls)
        ckpt = HERE / f"{stem}.safetensors"
        lowbit.save_file({"w": t, "x": x}, str(ckpt))
        save_file(expected_of(name, t, x), str(HERE / f"{stem}.expected.safetensors"),
                  metadata={"dequantized_sha256": digest(t.dequantize()), "lowbit_version": lowbit.__version__})
        written += [ckpt, HERE / f"{stem}.expected.safetensors"]
    return written


if __name__ == "__main__":
    for p in make(sys.argv[1:] or None):
        print(f"{p.relative_to(HERE.parent.parent)}: {p.stat().st_size:,} bytes")
