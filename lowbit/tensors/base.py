"""LowbitTensor: the base class of every packed weight format.

A format declares its stored tensors (``data_fields``) and its plain metadata
(``meta_fields``) once. From that the base class derives ``__tensor_flatten__`` /
``__tensor_unflatten__`` (torch.compile), ``detach``, ``clone``, ``to``, ``copy_``,
``__repr__``, pickling with ``torch.load(weights_only=True)`` and safetensors metadata.

Each class has its own op table, filled with ``Cls.implements(op, ...)``; it starts as a
copy of its parent's. An op the class does not implement raises
``UnsupportedOpError`` naming the class and the op: there is no dense fallback.
"""

from __future__ import annotations

import functools
import hashlib
import operator
import pathlib
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import return_and_correct_aliasing

from ..ops.library import kernel

aten = torch.ops.aten

__all__ = [
    "FLOAT_DTYPES",
    "LowbitTensor",
    "UnsupportedOpError",
    "linear_args",
    "slice_args",
    "slice_blocked",
    "slice_bounds",
    "format_registry",
    "check_float_weight",
    "device_type_reason",
    "check_linear_input",
    "finish_linear",
    "float_weight_reason",
    "kernel_linear",
    "register_mm_as_linear",
    "register_rowwise_views",
    "register_transposed_views",
    "target_device",
]

# format_name -> class; filled by __init_subclass__, read by serialization.
format_registry: dict[str, type[LowbitTensor]] = {}
# (class, func) -> op implementation or None, memoized by ``_lookup``; cleared by ``implements``.
_RESOLVED: dict[tuple[type, Any], Callable | None] = {}

# Metadata every format carries: the logical (unpacked) weight shape and the float dtype
# the weight stands for (what dequantize() returns and what outputs are cast to).
_BASE_META = ("shape", "dtype")


class UnsupportedOpError(NotImplementedError):
    """An op was called on a packed tensor whose class does not implement it."""


def linear_args(args, kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(input, weight, bias) from the arguments of ``F.linear``/``aten.linear``."""
    x = args[0] if len(args) > 0 else kwargs["input"]
    w = args[1] if len(args) > 1 else kwargs["weight"]
    b = args[2] if len(args) > 2 else kwargs.get("bias")
    return x, w, b


class LowbitTensor(torch.Tensor):
    """Base class of packed weight formats (see module docstring).

    Subclasses set:
        data_fields: names of the stored tensors, in order. A field may be None when
            ``optional_data_fields`` names it.
        meta_fields: names of plain metadata (ints, strs, bools, tuples), besides
            ``shape`` and ``dtype`` that every format has.
        format_name, format_version: stable identifiers written to checkpoints.
    """

    data_fields: ClassVar[tuple[str, ...]] = ()
    optional_data_fields: ClassVar[tuple[str, ...]] = ()
    meta_fields: ClassVar[tuple[str, ...]] = ()
    format_name: ClassVar[str | None] = None
    format_version: ClassVar[int] = 1
    _op_table: ClassVar[dict[Any, Callable]] = {}

    # ------------------------------------------------------------------ construction

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Own op table; lookups walk the MRO, so a subclass sees ops its parents
        # register later and can override any of them.
        cls._op_table = {}
        if cls.format_name is not None and "format_name" in cls.__dict__:
            if cls.format_name in format_registry:
                raise TypeError(
                    f"format_name {cls.format_name!r} is used by both "
                    f"{format_registry[cls.format_name].__qualname__} and {cls.__qualname__}"
                )
            format_registry[cls.format_name] = cls
            # Safe for torch.load(weights_only=True) with no user allowlisting.
            torch.serialization.add_safe_globals([cls])

    @staticmethod
    def __new__(cls, *args, **kwargs):
        fields = cls._bind(args, kwargs)
        first = next(fields[n] for n in cls.data_fields if fields[n] is not None)
        return torch.Tensor._make_wrapper_subclass(
            cls,
            tuple(fields["shape"]),
            dtype=fields["dtype"],
            device=first.device,
            requires_grad=False,
        )

    def __init__(self, *args, **kwargs):
        fields = self._bind(args, kwargs)
        for name in self.data_fields + self.meta_fields:
            setattr(self, name, fields[name])
        # Plain copies for hot paths (check_linear_input, __tensor_flatten__), see there.
        self._lb_shape = tuple(fields["shape"])
        self._lb_dtype = fields["dtype"]
        self._lb_device = next(fields[n] for n in self.data_fields if fields[n] is not None).device

    @classmethod
    def _bind(cls, args, kwargs) -> dict[str, Any]:
        names = cls.data_fields + cls.meta_fields + _BASE_META
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__} takes at most {len(names)} arguments ({names}), got {len(args)}")
        fields = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in names:
                raise TypeError(f"{cls.__name__} got an unexpected field {k!r}; fields are {names}")
            if k in fields:
                raise TypeError(f"{cls.__name__} got field {k!r} twice")
            fields[k] = v
        missing = [n for n in names if n not in fields and n not in cls.optional_data_fields]
        if missing:
            raise TypeError(f"{cls.__name__} is missing fields {missing}")
        for n in cls.optional_data_fields:
            fields.setdefault(n, None)
        for n in cls.data_fields:
            v = fields[n]
            if v is None and n not in cls.optional_data_fields:
                raise TypeError(f"{cls.__name__}.{n} must be a tensor, got None")
            if v is not None and not isinstance(v, torch.Tensor):
                raise TypeError(f"{cls.__name__}.{n} must be a tensor, got {type(v).__name__}")
        fields["shape"] = tuple(int(s) for s in fields["shape"])
        return fields

    def _fields(self) -> dict[str, Any]:
        out = {n: getattr(self, n) for n in self.data_fields + self.meta_fields}
        out["shape"] = tuple(self.shape)
        out["dtype"] = self.dtype
        return out

    def _replace(self, fn: Callable[[torch.Tensor], torch.Tensor] | None = None, **changes) -> LowbitTensor:
        """A new tensor of this class with ``fn`` applied to every data field and ``changes`` set."""
        f = self._fields()
        if fn is not None:
            for n in self.data_fields:
                if f[n] is not None:
                    f[n] = fn(f[n])
        f.update(changes)
        return type(self)(**f)

    # ------------------------------------------------------------------ torch.compile

    def __tensor_flatten__(self):
        # Dynamo's guards call this twice per packed weight before every call of a compiled
        # graph (metadata and inner-tensor names; Python guards): plain attribute reads only.
        # ``self.shape``/``self.dtype`` go through __torch_function__ where it is enabled
        # (~1.7 us each); the copies stored at construction do not.
        d = self.__dict__
        inner = [n for n in self.data_fields if d[n] is not None]
        meta = {n: d[n] for n in self.meta_fields}
        meta["shape"] = d["_lb_shape"] if "_lb_shape" in d else tuple(self.shape)
        meta["dtype"] = d["_lb_dtype"] if "_lb_dtype" in d else self.dtype
        return inner, meta

    @classmethod
    def __tensor_unflatten__(cls, inner_tensors, meta, outer_size, outer_stride):
        return cls(**inner_tensors, **meta)

    # ------------------------------------------------------------------ API every format has

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The float weight this tensor stands for, exactly as the codes encode it."""
        raise NotImplementedError(f"{type(self).__name__} must implement dequantize()")

    @classmethod
    def supports(cls, weight: torch.Tensor, device: torch.device | str | None = None) -> str | None:
        """None if ``weight`` can use this format on ``device``, else the reason why not."""
        return None

    def to_checkpoint(self) -> LowbitTensor:
        """The tensor written to disk in place of this one (default: itself)."""
        return self

    def from_checkpoint(self, device: torch.device) -> LowbitTensor:
        """The tensor a loaded checkpoint becomes on ``device`` (default: moved there)."""
        return self if device == self.device else self.to(device)

    def __repr__(self) -> str:
        meta = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.meta_fields)
        extra = f", {meta}" if meta else ""
        return (
            f"{type(self).__name__}(shape={tuple(self.shape)}, dtype={self.dtype}, "
            f"device={self.device}{extra})"
        )

    def nbytes_packed(self) -> int:
        """Bytes held by the stored tensors (what the format costs in memory)."""
        return sum(
            t.numel() * t.element_size() for n in self.data_fields if (t := getattr(self, n)) is not None
        )

    # ------------------------------------------------------------------ op tables

    @classmethod
    def implements(cls, *ops) -> Callable:
        """Register ``fn(func, types, args, kwargs)`` for ``ops`` in this class's table.

        ``ops`` may be torch functions (``F.linear``, seen by ``__torch_function__``) or
        aten overloads (seen by ``__torch_dispatch__``).
        """

        def decorator(fn):
            for op in ops:
                cls._op_table[op] = fn
            _RESOLVED.clear()  # a subclass may now resolve ``op`` differently
            return fn

        return decorator

    @classmethod
    def _lookup(cls, func) -> Callable | None:
        # Memoized per (class, func): every F.linear and every ``w.shape``/``w.device``
        # read of a packed weight comes through here (an MRO walk cost ~1-2 us each).
        key = (cls, func)
        try:
            return _RESOLVED[key]
        except KeyError:
            pass
        impl = None
        for klass in cls.__mro__:
            table = klass.__dict__.get("_op_table")
            if table is not None and func in table:
                impl = table[func]
                break
        _RESOLVED[key] = impl
        return impl

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        impl = cls._lookup(func)
        if impl is not None:
            if func is F.linear:
                x, w, b = linear_args(args, kwargs)
                if isinstance(w, LowbitTensor):
                    _check_linear_rank(x, w)
                    shape = _plain_shape(w)
                    if x.shape[-1] == shape[1] and x.numel() == 0:
                        # No rows: some kernels reject M = 0 (the C++ int4 GEMV), the answer is empty.
                        y = x.new_zeros((*x.shape[:-1], shape[0]))
                        return y if b is None else y + b.to(y.dtype)
                    if torch.is_grad_enabled() and _needs_input_grad(x, w, b):
                        return _PackedLinearFunction.apply(x, w, b, impl)
            return impl(func, types, args, kwargs)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        impl = cls._lookup(func)
        if impl is None:
            raise UnsupportedOpError(
                f"{cls.__name__} does not implement {func}; lowbit never falls back to dense "
                f"math silently. Call .dequantize() first if a float weight is what you need."
            )
        return impl(func, types, args, kwargs)


# ---------------------------------------------------------------------- backward
# One behaviour for every format and every batch size (README, "Training on a quantized
# base"): packed weights are frozen, and the input gets the straight-through gradient of
# the dequantized weight, grad_x = grad_y @ W_dequant (activation quantization, where a
# format has it, counts as identity). Kernels then never need a derivative of their own,
# and the gradient does not depend on which kernel a batch size picked.


def _plain_shape(w: LowbitTensor) -> tuple:
    # ``w.shape`` on a subclass goes through __torch_function__ (a few us, on every linear
    # call): the plain tuple stored at construction, when there is one.
    return w.__dict__.get("_lb_shape") or tuple(w.shape)


def _check_linear_rank(x, w: LowbitTensor) -> None:
    if isinstance(x, torch.Tensor) and x.dim() == 0:
        raise ValueError(
            f"{type(w).__name__} linear needs an input of shape [..., {w.shape[1]}], got a 0-D tensor; "
            f"use x.reshape(1, -1) or pass a vector of {w.shape[1]} features"
        )


_warned_frozen = False


def _needs_input_grad(x, w: LowbitTensor, b) -> bool:
    global _warned_frozen
    if w.requires_grad and not _warned_frozen:
        # load_state_dict(assign=True) copies the float weight's requires_grad=True onto the
        # packed one; it still gets no gradient, and the user is told once.
        _warned_frozen = True
        warnings.warn(
            f"{type(w).__name__} weights are frozen (lowbit computes input gradients only), but "
            f"this one has requires_grad=True and will get no gradient; call "
            f"weight.requires_grad_(False), or train float adapters (e.g. LoRA) on top",
            UserWarning,
            stacklevel=4,
        )
    return (isinstance(x, torch.Tensor) and x.requires_grad) or (isinstance(b, torch.Tensor) and b.requires_grad)


class _PackedLinearFunction(torch.autograd.Function):
    """``F.linear(x, packed_w, b)`` with the straight-through input gradient (see above)."""

    @staticmethod
    def forward(ctx, x, w, b, impl):
        ctx.w = w
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        ctx.b_dtype = None if b is None else b.dtype
        return impl(F.linear, (), (x, w, b), {})

    @staticmethod
    def backward(ctx, grad_y):
        w = ctx.w
        g2 = grad_y.reshape(-1, grad_y.shape[-1]).to(torch.float32)
        grad_x = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (g2 @ w.dequantize(torch.float32)).reshape(ctx.x_shape).to(ctx.x_dtype)
        if ctx.needs_input_grad[2]:
            grad_b = g2.sum(0).to(ctx.b_dtype)
        return grad_x, None, grad_b, None


# ---------------------------------------------------------------------- generic ops


def _self_arg(args) -> LowbitTensor:
    return args[0]


@LowbitTensor.implements(aten.detach.default, aten.alias.default)
def _detach(func, types, args, kwargs):
    return return_and_correct_aliasing(func, args, kwargs, _self_arg(args)._replace(func))


@LowbitTensor.implements(aten.clone.default)
def _clone(func, types, args, kwargs):
    return _self_arg(args)._replace(lambda t: t.clone())


@LowbitTensor.implements(aten._to_copy.default)
def _to_copy(func, types, args, kwargs):
    self = _self_arg(args)
    kwargs = dict(kwargs)
    device = kwargs.pop("device", None)
    dtype = kwargs.pop("dtype", None)
    kwargs.pop("layout", None)
    kwargs.pop("non_blocking", None)
    kwargs.pop("copy", None)
    if kwargs.pop("memory_format", None) not in (None, torch.preserve_format):
        raise UnsupportedOpError(f"{type(self).__name__} has a fixed memory layout; memory_format is not supported")
    if kwargs:
        raise UnsupportedOpError(f"{type(self).__name__}.to() does not take {sorted(kwargs)}")
    out = self
    if dtype is not None and dtype != self.dtype:
        out = out._with_dtype(dtype)
    if device is not None and torch.device(device) != self.device:
        out = out._to_device(torch.device(device))
    if out is self:
        out = self._replace()
    return out


def _with_dtype(self, dtype: torch.dtype) -> LowbitTensor:
    """Change the float dtype the weight stands for (``model.to(torch.bfloat16)``)."""
    if not dtype.is_floating_point or dtype.itemsize == 1:
        raise UnsupportedOpError(
            f"{type(self).__name__} stands for a float weight; it can change to float32/"
            f"float16/bfloat16, not {dtype}"
        )
    # A dtype the format refuses at quantize time is refused here too (e.g. DA8W4 and
    # float16), instead of at the first forward. Only the dtype's own reason counts:
    # supports() may also object to the device the tensor is stored on.
    probe = torch.empty(tuple(self.shape), dtype=dtype, device="meta")
    here = torch.empty(tuple(self.shape), dtype=self.dtype, device="meta")
    reason = type(self).supports(probe, self.device)
    if reason is not None and type(self).supports(here, self.device) is None:
        raise UnsupportedOpError(
            f"{type(self).__name__} cannot stand for a {dtype} weight: {reason}; keep the model in "
            f"{self.dtype}, or quantize the {dtype} model with a format that supports it"
        )
    return self._replace(dtype=dtype)


def _to_device(self, device: torch.device) -> LowbitTensor:
    """Move every stored tensor. Formats whose layout is device-specific override this."""
    return self._replace(lambda t: t.to(device))


LowbitTensor._with_dtype = _with_dtype
LowbitTensor._to_device = _to_device


@LowbitTensor.implements(aten.copy_.default)
def _copy_(func, types, args, kwargs):
    dst, src = args[0], args[1]
    if not isinstance(dst, LowbitTensor):
        raise UnsupportedOpError(
            f"cannot copy a packed {type(src).__name__}{tuple(src.shape)} into a float tensor: this "
            f"is a quantized state dict loaded into a float model. Use lowbit.load_into(model, path) "
            f"or model.load_state_dict(state_dict, assign=True), which replace the weights"
        )
    if type(src) is not type(dst) or src._meta_key() != dst._meta_key():
        if type(src) is not type(dst):
            diff = f"class {type(src).__name__} vs {type(dst).__name__}"
        else:
            names = ("shape", "dtype") + tuple(dst.meta_fields)
            diff = ", ".join(
                f"{n} {a!r} vs {b!r}" for n, a, b in zip(names, src._meta_key(), dst._meta_key()) if a != b
            )
        raise UnsupportedOpError(
            f"copy_ into {type(dst).__name__}{tuple(dst.shape)} needs a source of the same class "
            f"and metadata; they differ in {diff} (source vs destination). Quantize the model with "
            f"the checkpoint's config, or load with lowbit.load_into / load_state_dict(assign=True)"
        )
    for n in dst.data_fields:
        d, s = getattr(dst, n), getattr(src, n)
        if (d is None) != (s is None):
            raise UnsupportedOpError(f"copy_: field {n} is set on one tensor and None on the other")
        if d is not None:
            d.copy_(s)
    return dst


def _meta_key(self):
    return (tuple(self.shape), self.dtype) + tuple(getattr(self, n) for n in self.meta_fields)


LowbitTensor._meta_key = _meta_key


@functools.cache
def _code_fingerprint() -> str:
    # lowbit's kernels and dispatch code, hashed once per process: compiled graphs that
    # hold a packed weight are cached on disk by torch (AOT autograd cache), and the code
    # that traced them (which kernel a weight's linear records) is not otherwise in the key.
    root = pathlib.Path(__file__).resolve().parents[1]
    h = hashlib.blake2b(digest_size=16)
    for f in sorted((*root.glob("ops/*.py"), *root.glob("tensors/*.py"), *root.glob("csrc/*.cpp"))):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def _stable_hash_for_caching(self) -> str:
    """AOT autograd's cache key for a graph input that is this weight: its layout (type,
    metadata, inner tensors' shapes, strides, dtypes), lowbit's code, and what picks its
    kernel at trace time (the CPU dispatch table in use, the thread count). Without it,
    torch hashes the layout alone and a graph traced by another lowbit, or before
    ``lowbit.tune``, would be reused."""
    from ..ops.cpu_paths import active_table

    inner = [(n, tuple(t.shape), tuple(t.stride()), str(t.dtype), t.device.type)
             for n in self.data_fields if (t := getattr(self, n, None)) is not None]
    key = repr((type(self).__qualname__, self._meta_key(), inner, _code_fingerprint(), repr(active_table()),
                torch.get_num_threads()))
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


LowbitTensor._stable_hash_for_caching = _stable_hash_for_caching


@LowbitTensor.implements(aten._has_compatible_shallow_copy_type.default)
def _compatible(func, types, args, kwargs):
    return False


@LowbitTensor.implements(F.linear)
def _linear_not_implemented(func, types, args, kwargs):
    # Formats register their own linear; reaching this base entry means one was forgotten.
    w = linear_args(args, kwargs)[1]
    raise UnsupportedOpError(f"{type(w).__name__} does not implement F.linear")


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # weights and activations formats take


def target_device(weight: torch.Tensor, device) -> torch.device:
    """The device a ``supports(weight, device)`` question is about: ``device``, else the weight's."""
    return torch.device(device) if device is not None else weight.device


def device_type_reason(weight: torch.Tensor, device, device_type: str, where: str, hint: str = "") -> str | None:
    """Why ``supports(weight, device)`` is asked about a device that is not a ``device_type``
    (None: it is one); ``where`` names the kernel's device in the message, ``hint`` is added."""
    dev = target_device(weight, device)
    if dev.type != device_type:
        return f"runs on {where} only, got device {dev}{hint}"
    return None


def float_weight_reason(weight) -> str | None:
    """Why ``weight`` is not a 2-D float32/float16/bfloat16 tensor (None: it is); for ``supports``."""
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        return f"needs a 2-D weight, got {getattr(weight, 'ndim', type(weight).__name__)}-D"
    if weight.dtype not in FLOAT_DTYPES:
        return f"needs a float32/float16/bfloat16 weight, got {weight.dtype}"
    return None


def check_float_weight(w, fn: str) -> None:
    """Raise ValueError unless ``w`` is a 2-D float32/float16/bfloat16 weight (``fn`` names the caller)."""
    if not isinstance(w, torch.Tensor) or w.ndim != 2:
        got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"{fn} needs a 2-D [out_features, in_features] weight, got {got}")
    if w.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{fn} needs a float32/float16/bfloat16 weight, got {w.dtype}")


def check_linear_input(x, w: LowbitTensor) -> None:
    """Raise a clear error unless ``x`` can go through ``F.linear`` with packed ``w``."""
    if not isinstance(x, torch.Tensor) or x.dtype not in FLOAT_DTYPES:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{type(w).__name__} linear needs float32/float16/bfloat16 input, got {got}")
    # ``w.shape``/``w.device`` on a subclass go through __torch_function__ (a few us each,
    # per linear call): read the plain values stored at construction when present.
    shape = _plain_shape(w)
    if x.shape[-1] != shape[1]:
        raise ValueError(
            f"linear input has {x.shape[-1]} features but the weight expects {shape[1]} "
            f"(weight shape {shape})"
        )
    if x.device != (w.__dict__.get("_lb_device") or w.device):
        raise ValueError(f"input is on {x.device} but the weight is on {w.device}; move one of them")


def finish_linear(y2d: torch.Tensor, x: torch.Tensor, w: LowbitTensor, bias) -> torch.Tensor:
    """[M, N] kernel output back to ``x``'s leading dims, plus ``bias``."""
    y = y2d.reshape(*x.shape[:-1], _plain_shape(w)[0])
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y


def kernel_linear(op, *fields: str, untransposed_only: bool = False) -> Callable:
    """The ``F.linear`` implementation of a format whose kernel ``op`` (a ``torch.ops.lowbit``
    op or its name) takes the 2-D input followed by the stored ``fields`` in that order:
    input checks, the kernel on ``x`` as [M, K], then ``x``'s leading dims and the bias.
    ``untransposed_only``: refuse the ``t()`` view (``_is_row_layout()`` False)."""
    if isinstance(op, str):
        op = getattr(torch.ops.lowbit, op)
    getter = operator.attrgetter(*fields)
    get_fields = getter if len(fields) > 1 else lambda w: (getter(w),)

    def _linear(func, types, args, kwargs):
        x, w, bias = linear_args(args, kwargs)
        check_linear_input(x, w)
        if untransposed_only and not w._is_row_layout():
            raise UnsupportedOpError(f"F.linear needs the untransposed {type(w).__name__}; call .t() again")
        y = kernel(op, x.device.type)(x.reshape(-1, x.shape[-1]), *get_fields(w))
        return finish_linear(y, x, w, bias)

    return _linear


def slice_args(args, kwargs) -> tuple:
    """(self, dim, start, end, step) of ``aten.slice.Tensor`` with its defaults filled in."""
    names = ("self", "dim", "start", "end", "step")
    defaults = {"dim": 0, "start": None, "end": None, "step": 1}
    vals = dict(zip(names, args))
    vals.update(kwargs)
    return tuple(vals.get(n, defaults.get(n)) for n in names)


def slice_bounds(size: int, start, end, step, name: str) -> tuple[int, int]:
    """``aten.slice``'s (start, end) on a dim of ``size``: negatives wrap, both clamp to
    [0, size], end >= start. Packed formats take step 1 only."""
    if step != 1:
        raise UnsupportedOpError(f"{name} slicing needs step 1, got {step}")
    start = 0 if start is None else (start + size if start < 0 else start)
    end = size if end is None else min(end + size if end < 0 else end, size)
    start = max(0, min(start, size))
    return start, max(start, end)


def slice_blocked(w: LowbitTensor, data: str, params: tuple[str, ...], dim, start, end, step) -> LowbitTensor:
    """Slice a tensor whose ``data`` field is unpacked (one element per weight entry) and
    whose ``params`` hold one entry per block along each dim.

    A slice must start and end on block boundaries of ``dim`` unless the block spans the
    whole dim (then the block's parameters apply to any part of it).
    """
    dim = dim % 2
    size = w.shape[dim]
    start, end = slice_bounds(size, start, end, step, type(w).__name__)
    new = {data: getattr(w, data).narrow(dim, start, end - start).contiguous()}
    for p in params:
        t = getattr(w, p)
        n_blocks = t.shape[dim]
        if n_blocks == 1:
            new[p] = t
            continue
        block = size // n_blocks
        if start % block or (end % block and end != size):
            raise UnsupportedOpError(
                f"{type(w).__name__} can slice dim {dim} only at multiples of its block "
                f"size {block}, got [{start}, {end}); pick boundaries that are multiples of {block}"
            )
        new[p] = t.narrow(dim, start // block, -(-(end - start) // block)).contiguous()
    shape = list(w.shape)
    shape[dim] = end - start
    return w._replace(**new, shape=tuple(shape))


def _transpose(func, types, args, kwargs):
    w = args[0]
    return w._replace(lambda t: t.t(), shape=(w.shape[1], w.shape[0]))


def register_mm_as_linear(cls: type[LowbitTensor]) -> None:
    """``mm(x, w.t())`` / ``addmm(bias, x, w.t())``, the form ``F.linear`` decomposes into,
    served by the linear of ``w.t()``'s class. ``cls._is_row_layout()`` tells the
    untransposed form; any other mm raises."""

    @cls.implements(aten.mm.default, aten.addmm.default)
    def _mm(func, types, args, kwargs):
        bias, x, wt = (args[0], args[1], args[2]) if func is aten.addmm.default else (None, args[0], args[1])
        if not isinstance(wt, cls) or isinstance(x, LowbitTensor) or wt._is_row_layout():
            raise UnsupportedOpError(
                f"{type(wt).__name__} supports mm(x, w.t()) only (the form F.linear decomposes into)"
            )
        w = wt.t()
        return type(w)._lookup(F.linear)(F.linear, (), (x, w, bias), {})


def register_transposed_views(cls: type[LowbitTensor]) -> None:
    """``t()`` transposing every stored tensor, and the ``mm``/``addmm`` form on that view
    (``register_mm_as_linear``), for a format whose stored tensors are unpacked 2-D."""
    cls.implements(aten.t.default)(_transpose)
    register_mm_as_linear(cls)


def register_rowwise_views(cls: type[LowbitTensor], data: str = "qdata", params: tuple[str, ...] = ("scale",)) -> None:
    """``t()``, slicing on both dims and the ``mm``/``addmm`` form ``F.linear`` decomposes into,
    for a format whose ``data`` field is unpacked [N, K] with per-row/per-block ``params``
    (int8, float8). ``cls._is_row_layout()`` tells the untransposed form."""
    register_transposed_views(cls)

    @cls.implements(aten.slice.Tensor)
    def _slice(func, types, args, kwargs):
        w, dim, start, end, step = slice_args(args, kwargs)
        return slice_blocked(w, data, params, dim, start, end, step)
