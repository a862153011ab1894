"""The Triton kernels of lowbit/ops/triton_int4.py (imported on first use: needs triton).

Layouts and numerics are described in lowbit/ops/triton_int4.py and
lowbit/packing/int4_triton.py; this module only holds the ``@triton.jit`` functions
(Triton resolves a kernel's helpers from its module's globals). They call only
``tl`` builtins and helpers defined here (no ``tl.cdiv``/``tl.sum``/``tl.zeros``,
which are ``@jit`` functions of triton's standard library): the tests then can import
this module under ``TRITON_INTERPRET=1`` in a process whose triton is already loaded.
"""

import triton
import triton.language as tl

__all__ = ["dequant_kernel", "gemv2_kernel", "gemv3_kernel", "gemv_kernel", "marlin_dequant_kernel", "marlin_mm_kernel", "mm2_kernel",
           "mm_kernel"]


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _cdiv(a, b):
    return (a + b - 1) // b


@triton.jit
def _tile_ids(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    # Grouped ordering: GROUP_M row blocks share each weight tile while it is in L2.
    grid_n = _cdiv(N, BLOCK_N)
    width = GROUP_M * grid_n
    first_m = (pid // width) * GROUP_M
    rows_m = tl.minimum(_cdiv(M, BLOCK_M) - first_m, GROUP_M)
    return first_m + (pid % width) % rows_m, (pid % width) // rows_m


@triton.jit
def _mm_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # This program's split-K index (grid axis 1), the row / column offsets of its output
    # tile (grid axis 0, grouped order), the K offsets of one step and the row mask.
    pid_m, pid_n = _tile_ids(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return tl.program_id(1), offs_m, offs_n, tl.arange(0, BLOCK_K), offs_m < M


@triton.jit
def _dequant(nib, s, z, INT_ZP: tl.constexpr):
    # Codes (as float32) times scale: (q - z) * s with an integer zero point, else the
    # float zero point form (q - 8) * s + z.
    if INT_ZP:
        w = (nib - z) * s
    else:
        w = (nib - 8.0) * s + z
    return w


@triton.jit
def _write_tile(out_ptr, acc, offs_m, offs_n, M, N, stride_om, SPLIT_K: tl.constexpr):
    # Split-K partial sums add into an fp32 buffer; otherwise store in the output dtype.
    out = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    if SPLIT_K > 1:
        tl.atomic_add(out, acc, mask=mask)
    else:
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _write_row(out, y, n_mask, SPLIT_K: tl.constexpr):
    # A GEMV's output row: split-K partial sums add into fp32, else a store in the output dtype.
    if SPLIT_K > 1:
        tl.atomic_add(out, y, mask=n_mask)
    else:
        tl.store(out, y.to(out.dtype.element_ty), mask=n_mask)


@triton.jit
def _plane_params(s_ptr, z_ptr, k0, offs_n, n_mask, N, K, GS: tl.constexpr):
    # One scale / zero row per 16-wide plane (all 16 k in one group, GS >= 16).
    ok = n_mask & ((k0 + 0 * offs_n) < K)  # tensor compare (the interpreter wants one)
    g = k0 // GS
    s = tl.load(s_ptr + g * N + offs_n, mask=ok, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + g * N + offs_n, mask=ok, other=0).to(tl.float32)
    return s, z


@triton.jit
def _words(q_ptr, c, offs_i, offs_n, n_mask, N, n_chunks):
    # The [16, BLOCK_N] word tile of chunk c (zeros past the last chunk and column).
    rows = c * 16 + offs_i
    return tl.load(q_ptr + rows[:, None] * N + offs_n[None, :], mask=(rows < n_chunks * 16)[:, None] & n_mask[None, :],
                   other=0)


@triton.jit
def _gemv_ids(N, n_chunks, BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr):
    # A GEMV program's row (grid axis 2), columns (axis 0: offsets, 16 plane rows, mask) and
    # chunk range (axis 1: split-K): chunks c0 .. c0 + per_split - 1.
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    per_split = _cdiv(n_chunks, SPLIT_K)
    return tl.program_id(2), offs_n, tl.arange(0, 16), offs_n < N, tl.program_id(1) * per_split, per_split


@triton.jit
def gemv_kernel(x_ptr, q_ptr, s_ptr, z_ptr, out_ptr, M, N, K, n_chunks, stride_xm, stride_om,
                GS: tl.constexpr, INT_ZP: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr):
    # One activation row per program (grid axis 2). Each 128-K step loads its [16, BLOCK_N]
    # word tile once; plane j's codes multiply a contiguous 16-value activation slice and
    # accumulate elementwise into a [16, BLOCK_N] tile, reduced over the 16 rows at the end.
    pid_m, offs_n, offs_i, n_mask, c0, per_split = _gemv_ids(N, n_chunks, BLOCK_N, SPLIT_K)
    acc = tl.full((16, BLOCK_N), 0.0, tl.float32)
    for it in range(per_split):
        c = c0 + it
        q = _words(q_ptr, c, offs_i, offs_n, n_mask, N, n_chunks)
        for j in tl.static_range(8):
            k0 = c * 128 + 16 * j
            k = k0 + offs_i
            a = tl.load(x_ptr + pid_m * stride_xm + k, mask=k < K, other=0.0).to(tl.float32)
            s, z = _plane_params(s_ptr, z_ptr, k0, offs_n, n_mask, N, K, GS)
            nib = ((q >> (4 * j)) & 0xF).to(tl.float32)
            acc += _dequant(nib, s[None, :], z[None, :], INT_ZP) * a[:, None]
    _write_row(out_ptr + pid_m * stride_om + offs_n, tl.reduce(acc, 0, _add), n_mask, SPLIT_K)


@triton.jit
def mm_kernel(x_ptr, q_ptr, s_ptr, z_ptr, out_ptr, M, N, K, Kp, stride_xm, stride_om,
              GS: tl.constexpr, INT_ZP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr):
    # Each BLOCK_K step gathers the [BLOCK_K, BLOCK_N] codes in natural k order: code k
    # sits in word row 16 (k // 128) + k % 16 at nibble (k % 128) // 16, so the loads
    # along N stay coalesced and the 8 codes of a word come from L1 after the first.
    pid_k, offs_m, offs_n, offs_kk, m_mask = _mm_tile(M, N, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    n_mask = offs_n < N
    per_split = _cdiv(_cdiv(Kp, BLOCK_K), SPLIT_K)
    t0 = pid_k * per_split
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for it in range(per_split):
        t = t0 + it
        k = t * BLOCK_K + offs_kk
        k_ok = k < K  # also false past the last tile of the last split
        row = (k // 128) * 16 + k % 16
        shift = 4 * ((k % 128) // 16)
        q = tl.load(q_ptr + row[:, None] * N + offs_n[None, :], mask=k_ok[:, None] & n_mask[None, :], other=0)
        nib = ((q >> shift[:, None]) & 0xF).to(tl.float32)
        if GS >= BLOCK_K:  # the tile lies in one group: one scale / zero row
            s, z = _plane_params(s_ptr, z_ptr, t * BLOCK_K, offs_n, n_mask, N, K, GS)
            s = s[None, :]
            z = z[None, :]
        else:
            g_ptr = (k // GS)[:, None] * N + offs_n[None, :]
            ok = k_ok[:, None] & n_mask[None, :]
            s = tl.load(s_ptr + g_ptr, mask=ok, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + g_ptr, mask=ok, other=0).to(tl.float32)
        w = _dequant(nib, s, z, INT_ZP)
        a = tl.load(x_ptr + offs_m[:, None] * stride_xm + k[None, :], mask=m_mask[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(a, w.to(a.dtype), acc)
    _write_tile(out_ptr, acc, offs_m, offs_n, M, N, stride_om, SPLIT_K)


# ---------------------------------------------------------------------- factored kernels (mm2, gemv2)
# Same layout, but the affine map is applied once per group, not per weight. A code q
# enters the dot as v = 1 + q / 16, built by moving its 4 bits into the top mantissa
# bits of 1.0 (exact in bf16, fp16 and fp32; no int -> float convert). For the GS
# k of one group and one column, with P = sum x_k v_k and xsum = sum x_k:
#   float zero point  sum x_k ((q_k - 8) s + z) = 16 s P + (z - 24 s) xsum
#   int zero point    sum x_k (q_k - z) s       = 16 s P - (z + 16) s xsum
# MAG_SH is the bit of the code's lowest bit (3 bf16, 6 fp16, 19 fp32), MAG_ONE the bits
# of 1.0 in that dtype.


@triton.jit
def _nibble_at(q, j: tl.constexpr, MAG_SH: tl.constexpr):
    # q shifted so that nibble j's lowest bit lands on bit MAG_SH (other bits unmasked).
    if 4 * j <= MAG_SH:
        t = q << (MAG_SH - 4 * j)
    else:
        t = q >> (4 * j - MAG_SH)
    return t


@triton.jit
def _plane(q, j: tl.constexpr, MAG_SH: tl.constexpr, MAG_ONE: tl.constexpr, DT: tl.constexpr):
    # Nibble plane j of an int32 word tile as 1 + code / 16 in DT: one shift, one and-or.
    v = (_nibble_at(q, j, MAG_SH) & (0xF << MAG_SH)) | MAG_ONE
    if MAG_SH < 16:
        v = v.to(tl.int16)
    return v.to(DT, bitcast=True)


@triton.jit
def _cat(a, b):
    # [R, C] and [R, C] -> [2R, C], a's rows first.
    return tl.reshape(tl.permute(tl.join(a, b), (2, 0, 1)), (2 * a.shape[0], a.shape[1]))


@triton.jit
def _planes(q, j0: tl.constexpr, SUB: tl.constexpr, JOIN: tl.constexpr, MAG_SH: tl.constexpr,
            MAG_ONE: tl.constexpr, DT: tl.constexpr):
    # Planes j0 .. j0 + SUB - 1 stacked as a [16 SUB, BLOCK_N] tile: rows in k order.
    if SUB == 1:
        w = _plane(q, j0, MAG_SH, MAG_ONE, DT)
    elif JOIN:  # per-plane constant shifts, joined in pairs
        w = _cat(_plane(q, j0, MAG_SH, MAG_ONE, DT), _plane(q, j0 + 1, MAG_SH, MAG_ONE, DT))
        if SUB >= 4:
            w = _cat(w, _cat(_plane(q, j0 + 2, MAG_SH, MAG_ONE, DT), _plane(q, j0 + 3, MAG_SH, MAG_ONE, DT)))
        if SUB == 8:
            w = _cat(w, _cat(_cat(_plane(q, j0 + 4, MAG_SH, MAG_ONE, DT), _plane(q, j0 + 5, MAG_SH, MAG_ONE, DT)),
                             _cat(_plane(q, j0 + 6, MAG_SH, MAG_ONE, DT), _plane(q, j0 + 7, MAG_SH, MAG_ONE, DT))))
    else:  # one broadcast shift of the [1, 16, BLOCK_N] words by a [SUB, 1, 1] vector
        sh = 4 * (j0 + tl.arange(0, SUB))
        v = (((q[None, :, :] >> sh[:, None, None]) & 0xF) << MAG_SH) | MAG_ONE
        if MAG_SH < 16:
            v = v.to(tl.int16)
        w = tl.reshape(v.to(DT, bitcast=True), (16 * SUB, q.shape[1]))
    return w


@triton.jit
def _group_coeffs(s_ptr, z_ptr, g, offs_n, n_mask, N, K, GS: tl.constexpr, INT_ZP: tl.constexpr):
    # (16 s, correction) of group g: y += 16 s P + correction * xsum (see above).
    ok = n_mask & ((g * GS + 0 * offs_n) < K)  # groups past K (padding of the last chunk): 0
    s = tl.load(s_ptr + g * N + offs_n, mask=ok, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + g * N + offs_n, mask=ok, other=0).to(tl.float32)
    if INT_ZP:
        corr = -(z + 16.0) * s
    else:
        corr = z - 24.0 * s
    return 16.0 * s, corr


@triton.jit
def _plane_pair(q, h: tl.constexpr, MAG_SH: tl.constexpr, MAG_ONE: tl.constexpr, DT: tl.constexpr):
    # Planes h and h + 4 (h < 4) of a word tile with one shift and one and-or: nibble h + 4
    # sits 16 bits above nibble h, so the same shift lands both on a 16-bit half's code
    # bits (16-bit dtypes only).
    v = (_nibble_at(q, h, MAG_SH) & ((0xF << MAG_SH) * 0x10001)) | (MAG_ONE * 0x10001)
    return v.to(tl.int16).to(DT, bitcast=True), (v >> 16).to(tl.int16).to(DT, bitcast=True)


@triton.jit
def _act_tile(x_ptr, offs_m, m_mask, stride_xm, k, K):
    # The [BLOCK_M, len(k)] activation slice (zeros past M and K).
    return tl.load(x_ptr + offs_m[:, None] * stride_xm + k[None, :], mask=m_mask[:, None] & (k < K)[None, :], other=0.0)


@triton.jit
def _dot_step(a, w, part, xs, FIRST: tl.constexpr, XDOT: tl.constexpr):
    # One tl.dot into the group's partial, and the activation sums of the slice: a row
    # reduction, or (XDOT) a dot with ones in the accumulator's layout.
    if FIRST:
        part = tl.dot(a, w)
        if XDOT:
            xs = tl.dot(a, tl.full(w.shape, 1.0, a.dtype))
        else:
            xs = tl.reduce(a.to(tl.float32), 1, _add)
    else:
        part = tl.dot(a, w, part)
        if XDOT:
            xs = tl.dot(a, tl.full(w.shape, 1.0, a.dtype), xs)
        else:
            xs += tl.reduce(a.to(tl.float32), 1, _add)
    return part, xs


@triton.jit
def _apply_group(acc, part, xs, s_ptr, z_ptr, g, offs_n, n_mask, N, K, GS: tl.constexpr, INT_ZP: tl.constexpr,
                 XDOT: tl.constexpr):
    s16, corr = _group_coeffs(s_ptr, z_ptr, g, offs_n, n_mask, N, K, GS, INT_ZP)
    if XDOT:
        acc += part * s16[None, :] + xs * corr[None, :]
    else:
        acc += part * s16[None, :] + xs[:, None] * corr[None, :]
    return acc


@triton.jit
def mm2_kernel(x_ptr, q_ptr, s_ptr, z_ptr, out_ptr, M, N, K, n_chunks, stride_xm, stride_om,
               GS: tl.constexpr, INT_ZP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               SUB: tl.constexpr, GP: tl.constexpr, JOIN: tl.constexpr, XDOT: tl.constexpr, PAIR: tl.constexpr,
               SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, MAG_SH: tl.constexpr, MAG_ONE: tl.constexpr,
               PREFETCH: tl.constexpr = False):
    # Tensor-core GEMM on the raw codes. Each 128-K chunk loads its [16, BLOCK_N] word
    # tile once; SUB planes at a time (16 SUB consecutive k) become one [16 SUB, BLOCK_N]
    # tile of 1 + q / 16 for one tl.dot with the [BLOCK_M, 16 SUB] activation slice. The
    # dots of one group (GP planes: GS / 16, at most the chunk's 8) sum into `part`; at
    # the group's end one [BLOCK_M, BLOCK_N] FMA pair applies its scale and zero point.
    # PAIR (SUB = 1, GP = 8: the chunk in one group): planes h and h + 4 come from one
    # shift and one and-or (_plane_pair). Split-K over chunks (grid axis 1) for small grids.
    # PREFETCH: the next chunk's words are loaded before this chunk's dots (twice the weight
    # bytes in flight per program; the loads past this split's chunks are masked off).
    pid_k, offs_m, offs_n, offs_s, m_mask = _mm_tile(M, N, BLOCK_M, BLOCK_N, 16 * SUB, GROUP_M)
    n_mask = offs_n < N
    offs_i = tl.arange(0, 16)
    per_split = _cdiv(n_chunks, SPLIT_K)
    c0 = pid_k * per_split
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    part = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    if XDOT:
        xs = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    else:
        xs = tl.full((BLOCK_M,), 0.0, tl.float32)
    c_end = tl.minimum(c0 + per_split, n_chunks)
    if PREFETCH:
        q_next = _words(q_ptr, c0, offs_i, offs_n, n_mask, N, c_end)
    for it in range(per_split):
        c = c0 + it
        if PREFETCH:
            q = q_next
            q_next = _words(q_ptr, c + 1, offs_i, offs_n, n_mask, N, c_end)
        else:
            q = _words(q_ptr, c, offs_i, offs_n, n_mask, N, n_chunks)
        if PAIR:
            for h in tl.static_range(4):
                k = c * 128 + 16 * h + offs_s
                a = _act_tile(x_ptr, offs_m, m_mask, stride_xm, k, K)
                lo, hi = _plane_pair(q, h, MAG_SH, MAG_ONE, a.dtype)
                part, xs = _dot_step(a, lo, part, xs, h == 0, XDOT)
                part, xs = _dot_step(_act_tile(x_ptr, offs_m, m_mask, stride_xm, k + 64, K), hi, part, xs, False, XDOT)
            acc = _apply_group(acc, part, xs, s_ptr, z_ptr, (c * 128) // GS, offs_n, n_mask, N, K, GS, INT_ZP, XDOT)
        else:
            for h in tl.static_range(8 // SUB):
                k = c * 128 + 16 * SUB * h + offs_s
                a = _act_tile(x_ptr, offs_m, m_mask, stride_xm, k, K)
                w = _planes(q, SUB * h, SUB, JOIN, MAG_SH, MAG_ONE, a.dtype)
                part, xs = _dot_step(a, w, part, xs, (SUB * h) % GP == 0, XDOT)  # first dot of a group
                if (SUB * (h + 1)) % GP == 0:  # last dot of a group
                    acc = _apply_group(acc, part, xs, s_ptr, z_ptr, (c * 128 + 16 * SUB * h) // GS, offs_n, n_mask, N,
                                       K, GS, INT_ZP, XDOT)
    _write_tile(out_ptr, acc, offs_m, offs_n, M, N, stride_om, SPLIT_K)


@triton.jit
def gemv2_kernel(x_ptr, q_ptr, s_ptr, z_ptr, out_ptr, M, N, K, n_chunks, stride_xm, stride_om,
                 GS: tl.constexpr, INT_ZP: tl.constexpr, BLOCK_N: tl.constexpr, GP: tl.constexpr,
                 PREFETCH: tl.constexpr, SPLIT_K: tl.constexpr):
    # CUDA-core GEMV, one activation row per program (grid axis 2), factored like
    # mm2_kernel: per weight one shift, one and-or (fp32 1 + q / 16) and one FMA into the
    # group's [16, BLOCK_N] partial; per group one FMA per partial element (16 s) and a
    # [BLOCK_N] correction times the group's activation sum. Rows reduced at the end.
    # PREFETCH: the next chunk's words are loaded before this chunk is computed (twice
    # the bytes in flight; Triton does not pipeline loads that feed no dot).
    pid_m, offs_n, offs_i, n_mask, c0, per_split = _gemv_ids(N, n_chunks, BLOCK_N, SPLIT_K)
    acc = tl.full((16, BLOCK_N), 0.0, tl.float32)
    part = tl.full((16, BLOCK_N), 0.0, tl.float32)
    ycorr = tl.full((BLOCK_N,), 0.0, tl.float32)
    xv = tl.full((16,), 0.0, tl.float32)
    if PREFETCH:
        q_next = _words(q_ptr, c0, offs_i, offs_n, n_mask, N, n_chunks)
    for it in range(per_split):
        c = c0 + it
        if PREFETCH:  # chunk c was loaded during chunk c - 1; start c + 1 now
            q = q_next
            q_next = _words(q_ptr, c + 1, offs_i, offs_n, n_mask, N, n_chunks)
        else:
            q = _words(q_ptr, c, offs_i, offs_n, n_mask, N, n_chunks)
        for j in tl.static_range(8):
            k = c * 128 + 16 * j + offs_i
            a = tl.load(x_ptr + pid_m * stride_xm + k, mask=k < K, other=0.0).to(tl.float32)
            w = _plane(q, j, 19, 0x3F800000, tl.float32)
            if j % GP == 0:
                part = w * a[:, None]
                xv = a
            else:
                part += w * a[:, None]
                xv += a
            if (j + 1) % GP == 0:
                s16, corr = _group_coeffs(s_ptr, z_ptr, (c * 128 + 16 * j) // GS, offs_n, n_mask, N, K, GS, INT_ZP)
                acc += part * s16[None, :]
                ycorr += corr * tl.reduce(xv, 0, _add)
    _write_row(out_ptr + pid_m * stride_om + offs_n, tl.reduce(acc, 0, _add) + ycorr, n_mask, SPLIT_K)


@triton.jit
def gemv3_kernel(x_ptr, q_ptr, s_ptr, z_ptr, out_ptr, M, N, K, n_chunks, stride_xm, stride_om,
                 GS: tl.constexpr, INT_ZP: tl.constexpr, BLOCK_N: tl.constexpr, CH: tl.constexpr,
                 GP: tl.constexpr, PREFETCH: tl.constexpr, SPLIT_K: tl.constexpr):
    # gemv2's factored numerics on a [CH, 16, BLOCK_N] word tile: CH chunks (128 CH k)
    # per step, so that one program keeps CH times the bytes in flight and a column strip
    # needs no split-K (SPLIT_K 1: no zeroed fp32 buffer, no atomics, no cast kernel; one
    # launch). Per weight one shift, one and-or (fp32 1 + q / 16) and one FMA into the
    # group's partial; per group one FMA per partial element (16 s, broadcast over the 16
    # rows of a chunk) and the zero-point correction times the group's activation sums.
    # Rows and chunks reduced once at the end. Groups of 32 / 64 (GP = 2 / 4 planes) apply
    # their scales two / four times per step.
    pid_m = tl.program_id(2)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_c = tl.arange(0, CH)
    offs_i = tl.arange(0, 16)
    n_steps = _cdiv(n_chunks, CH)
    per_split = _cdiv(n_steps, SPLIT_K)
    s0 = tl.program_id(1) * per_split
    acc = tl.full((CH, 16, BLOCK_N), 0.0, tl.float32)
    part = tl.full((CH, 16, BLOCK_N), 0.0, tl.float32)
    corr_acc = tl.full((CH, BLOCK_N), 0.0, tl.float32)
    xv = tl.full((CH, 16), 0.0, tl.float32)
    if PREFETCH:
        q_next = _words3(q_ptr, s0 * CH + offs_c, offs_i, offs_n, n_mask, N, n_chunks)
    for it in range(per_split):
        c = (s0 + it) * CH + offs_c  # [CH] chunk indices of this step
        if PREFETCH:
            q = q_next
            q_next = _words3(q_ptr, c + CH, offs_i, offs_n, n_mask, N, n_chunks)
        else:
            q = _words3(q_ptr, c, offs_i, offs_n, n_mask, N, n_chunks)
        for j in tl.static_range(8):
            k = c[:, None] * 128 + 16 * j + offs_i[None, :]  # [CH, 16]
            a = tl.load(x_ptr + pid_m * stride_xm + k, mask=k < K, other=0.0).to(tl.float32)
            w = _plane(q, j, 19, 0x3F800000, tl.float32)
            if j % GP == 0:
                part = w * a[:, :, None]
                xv = a
            else:
                part += w * a[:, :, None]
                xv += a
            if (j + 1) % GP == 0:
                g = (c * 128 + 16 * j) // GS  # [CH] group of each chunk's planes
                ok = (g * GS < K)[:, None] & n_mask[None, :]
                gp = g[:, None] * N + offs_n[None, :]
                s = tl.load(s_ptr + gp, mask=ok, other=0.0).to(tl.float32)
                z = tl.load(z_ptr + gp, mask=ok, other=0).to(tl.float32)
                if INT_ZP:
                    corr = -(z + 16.0) * s
                else:
                    corr = z - 24.0 * s
                acc += part * (16.0 * s)[:, None, :]
                corr_acc += corr * tl.reduce(xv, 1, _add)[:, None]
    y = tl.reduce(tl.reduce(acc, 1, _add) + corr_acc, 0, _add)
    _write_row(out_ptr + pid_m * stride_om + offs_n, y, n_mask, SPLIT_K)


@triton.jit
def _words3(q_ptr, c, offs_i, offs_n, n_mask, N, n_chunks):
    # The [CH, 16, BLOCK_N] word tile of chunks c (zeros past the last chunk and column).
    rows = c[:, None] * 16 + offs_i[None, :]
    ok = (rows < n_chunks * 16)[:, :, None] & n_mask[None, None, :]
    return tl.load(q_ptr + rows[:, :, None] * N + offs_n[None, None, :], mask=ok, other=0)


@triton.jit
def dequant_kernel(q_ptr, s_ptr, z_ptr, out_ptr, N, K,
                    GS: tl.constexpr, INT_ZP: tl.constexpr, BLOCK_N: tl.constexpr):
    c = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_i = tl.arange(0, 16)
    n_mask = offs_n < N
    q = tl.load(q_ptr + (c * 16 + offs_i)[:, None] * N + offs_n[None, :], mask=n_mask[None, :], other=0)
    for j in tl.static_range(8):
        k0 = c * 128 + 16 * j
        k = k0 + offs_i
        nib = ((q >> (4 * j)) & 0xF).to(tl.float32)
        s, z = _plane_params(s_ptr, z_ptr, k0, offs_n, n_mask, N, K, GS)
        w = _dequant(nib, s[None, :], z[None, :], INT_ZP)
        tl.store(out_ptr + k[:, None] * N + offs_n[None, :], w.to(out_ptr.dtype.element_ty),
                 mask=(k[:, None] < K) & n_mask[None, :])

@triton.jit
def _marlin_codes(q_ptr, s_ptr, z_ptr, k, offs_n, N, g, SINGLE_GROUP: tl.constexpr):
    # Dequantized [len(k), len(offs_n)] fp32 tile of a Marlin-layout weight, rows k all in
    # group g. Code (k, n) (lowbit/packing/int4_marlin.py): word row k // 16 (2N words per
    # row); in the 128-word chunk of columns n // 64, lane 4 (n % 8) + (k % 8) // 2 owns 4
    # words, one per 16-column tile (n % 64) // 16; nibble 4 (k % 2) + 2 ((n % 16) // 8) +
    # (k % 16) // 8. Scales: grouped order puts column n of a 64-chunk at 8 (n % 8) +
    # (n % 64) // 8; one group (channelwise) uses Marlin's single order in chunks of 32.
    # Zero points: the grouped order, then the 0,2,4,6,1,3,5,7 interleave of every 8
    # values, 8 per int32 along N ([G, N / 8]).
    n_word = (offs_n // 64) * 128 + 16 * (offs_n % 8) + (offs_n % 64) // 16
    n_shift = 8 * ((offs_n % 16) // 8)
    if SINGLE_GROUP:
        cc = offs_n % 32
        s_col = (offs_n // 32) * 32 + 8 * ((cc % 8) // 2) + 2 * (cc // 8) + cc % 2
    else:
        s_col = (offs_n // 64) * 64 + 8 * (offs_n % 8) + (offs_n % 64) // 8
    zp = (offs_n % 64) // 8
    z_word = (offs_n // 64) * 8 + offs_n % 8
    z_shift = 4 * (zp // 2 + 4 * (zp % 2))
    k_word = (k // 16) * (2 * N) + 4 * ((k % 8) // 2)
    k_shift = 16 * (k % 2) + 4 * ((k % 16) // 8)
    words = tl.load(q_ptr + k_word[:, None] + n_word[None, :])
    nib = ((words >> (k_shift[:, None] + n_shift[None, :])) & 0xF).to(tl.float32)
    s = tl.load(s_ptr + g * N + s_col).to(tl.float32)
    z = ((tl.load(z_ptr + g * (N // 8) + z_word) >> z_shift) & 0xF).to(tl.float32)
    return (nib - z[None, :]) * s[None, :]


@triton.jit
def marlin_mm_kernel(x_ptr, q_ptr, s_ptr, z_ptr, out_ptr, M, N, K, stride_xm, stride_om,
                     GS: tl.constexpr, SINGLE_GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                     GROUP_M: tl.constexpr):
    # Fused dequantize + tl.dot straight from the Marlin layout (gathers in _marlin_codes).
    pid_k, offs_m, offs_n, offs_kk, m_mask = _mm_tile(M, N, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    n_k = K // BLOCK_K
    per_split = _cdiv(n_k, SPLIT_K)
    t0 = pid_k * per_split
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for it in range(per_split):
        t = tl.minimum(t0 + it, n_k - 1)  # past the end: redo the last tile with a zero activation
        live = (t0 + it + 0 * offs_kk) < n_k  # a tensor compare (the interpreter wants one)
        k = t * BLOCK_K + offs_kk
        w = _marlin_codes(q_ptr, s_ptr, z_ptr, k, offs_n, N, (t * BLOCK_K) // GS, SINGLE_GROUP)  # BLOCK_K | GS
        a = tl.load(x_ptr + offs_m[:, None] * stride_xm + k[None, :], mask=m_mask[:, None] & live[None, :], other=0.0)
        acc = tl.dot(a, w.to(a.dtype), acc)
    _write_tile(out_ptr, acc, offs_m, offs_n, M, N, stride_om, SPLIT_K)


@triton.jit
def marlin_dequant_kernel(q_ptr, s_ptr, z_ptr, out_ptr, N, K, GS: tl.constexpr, SINGLE_GROUP: tl.constexpr,
                          BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    # The Marlin-layout weight as a row-major [K, N] tile for cuBLAS (large-M path).
    k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    w = _marlin_codes(q_ptr, s_ptr, z_ptr, k, offs_n, N, (tl.program_id(0) * BLOCK_K) // GS, SINGLE_GROUP)
    tl.store(out_ptr + k[:, None] * N + offs_n[None, :], w.to(out_ptr.dtype.element_ty))
