"""The Triton kernel behind `kernels.grouped_triton` (imported at its first launch: this module imports Triton)."""
import triton
import triton.language as tl


@triton.jit
def grouped_gemm_kernel(x_ptr, pairs_ptr, w_ptr, w_desc, offs_ptr, out_ptr, top_k, n_out, k_dim, m_tiles,
                        stride_we, stride_wn, gate_rows, rows_per_expert,
                        GATED: tl.constexpr, PAIRS: tl.constexpr, EVEN_K: tl.constexpr, TMA: tl.constexpr,
                        IEEE: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # TMA: the weights through a tensor descriptor over [E * rows_per_expert, K] (Hopper's bulk copies; rows
    # past an expert's own are read and never stored, the K tail is zero-filled); else plain loads.
    # IEEE (float32 tensors): full-precision products (Triton's default for float32 is tf32).
    # program (pid, e): expert e, token tile pid % m_tiles, output tile pid // m_tiles. The token tiles of
    # one output tile are neighbours in launch order, so an expert's second reading of a weight tile
    # (more than block_m tokens) runs beside the first and meets it in L2.
    pid = tl.program_id(0)
    e = tl.program_id(1)
    m_tile = pid % m_tiles
    n_tile = pid // m_tiles
    end = tl.load(offs_ptr + e)
    begin = tl.load(offs_ptr + tl.maximum(e - 1, 0))
    begin = tl.where(e > 0, begin, 0)
    row0 = begin + m_tile * BLOCK_M
    if row0 >= end:
        return
    rows = row0 + tl.arange(0, BLOCK_M)
    row_ok = rows < end
    if PAIRS:
        src = tl.load(pairs_ptr + rows, mask=row_ok, other=0) // top_k
    else:
        src = rows
    cols = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < n_out
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + src.to(tl.int64)[:, None] * k_dim + ks[None, :]
    w_rows = w_ptr + e.to(tl.int64) * stride_we + cols.to(tl.int64) * stride_wn
    b_ptrs = w_rows[None, :] + ks[:, None]  # [BLOCK_K, BLOCK_N]: the weights' rows are K-contiguous
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    up_shift = gate_rows.to(tl.int64) * stride_wn
    desc_row = e * rows_per_expert + n_tile * BLOCK_N
    for k0 in range(0, k_dim, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
        else:
            k_ok = (k0 + ks) < k_dim
            a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        if TMA:
            b = w_desc.load([desc_row, k0]).T
        elif EVEN_K:
            b = tl.load(b_ptrs, mask=col_ok[None, :], other=0.0)
        else:
            b = tl.load(b_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        if GATED:
            if TMA:
                u = w_desc.load([desc_row + gate_rows, k0]).T
            elif EVEN_K:
                u = tl.load(b_ptrs + up_shift, mask=col_ok[None, :], other=0.0)
            else:
                u = tl.load(b_ptrs + up_shift, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            if IEEE:
                acc_up = tl.dot(a, u, acc_up, input_precision="ieee")
            else:
                acc_up = tl.dot(a, u, acc_up)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    if GATED:  # torch's roundings: gate and up in the output dtype, silu(gate) rounded, the product rounded
        gate = acc.to(out_ptr.dtype.element_ty).to(tl.float32)
        up = acc_up.to(out_ptr.dtype.element_ty).to(tl.float32)
        act = (gate / (1.0 + tl.exp(-gate))).to(out_ptr.dtype.element_ty).to(tl.float32)
        acc = act * up
    out_ptrs = out_ptr + rows.to(tl.int64)[:, None] * n_out + cols[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])
