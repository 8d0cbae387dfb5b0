/*
 * ftp-export token-routing kernels: C API.
 *
 * One set of launch functions, called by the TensorRT glue (plugins/ftp*Plugin/ftp*Plugin.cpp) and by the
 * PyTorch extension (plugins/torch_ext/ftp_torch_ext.cpp), so both run exactly the same code.
 *
 * Conventions
 *   - All pointers are device pointers; all tensors are dense row-major (TensorRT kLINEAR).
 *   - Hidden rows are copied as raw bits: the dtype only sets the element size (bit-exact for
 *     float32 / float16 / bfloat16, NaN payloads included).
 *   - `valid` / `active` are one byte per element (C++ bool / torch.bool): 0 = false, anything
 *     else = true. TensorRT plugin tensors cannot be kBOOL or kUINT8, so the TensorRT plugins take
 *     and give them as int32 and convert with ftp_flags_from_int32 / ftp_flags_to_int32 (below).
 *   - Every launch is asynchronous on `stream`: no host synchronisation, no device-to-host copy,
 *     no allocation. Scratch memory comes from `workspace` (at least *_workspace_size() bytes,
 *     256-byte aligned; may be NULL when the size query returns 0). Sizing it is the caller's
 *     job: `workspace_size` is not checked by the launches (TensorRT's enqueue does not say how
 *     much it allocated; the PyTorch extension checks its workspace tensor before launching).
 *   - Return value: cudaSuccess, cudaErrorInvalidValue for bad arguments (nothing is launched),
 *     or the launch error reported by cudaGetLastError().
 *
 * Semantics (plugins/README.md has the full spec; ftp_export/routing/selection.py is the
 * Python definition the kernels reproduce bit for bit):
 *   FtpTopKGather      per-row top-K by a unique rank key, indices ascending, active flags
 *   FtpTopKScatter     out = residual; out[b, indices[b,j]] = rows[b,j] where active[b,j]
 *   FtpThresholdGather keep iff valid && score >= threshold (float32); rows = flat b*T+t ascending
 *   FtpRowScatter      out = residual; out.view(B*T, D)[rows[n]] = rows_data[n]
 */
#ifndef FTP_KERNELS_H
#define FTP_KERNELS_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element type of the hidden-state tensors (hidden, gathered, residual, rows, rows_data, out). */
typedef enum ftp_dtype
{
    FTP_DTYPE_FLOAT32 = 0,
    FTP_DTYPE_FLOAT16 = 1,
    FTP_DTYPE_BFLOAT16 = 2
} ftp_dtype_t;

/*
 * How FtpTopKGather ranks tokens and counts slots (ftp_export/routing/selection.py, bit for bit):
 *   q   = valid ? floor(clamp(score, -256, 256) * 2^24) : -2^33          (float32 arithmetic)
 *   key = q * 2^17 + (2^17 - 1 - t)                                       (unique per row)
 *   count(n) = ceil(n * (2*keep_q16 - 1) / 131072)                        (integer arithmetic)
 *   K = T == 0 ? 0 : min(T, max(1, count(T)));
 *   k_b = n_b == 0 ? 0 : min(n_b, max(1, count(n_b))), n_b = valid tokens of row b.
 */

/* Largest sequence length the rank key can tell apart (17 position bits). */
#define FTP_MAX_TOKENS 131072

/* Bytes per element of `dtype`, 0 if unknown. */
size_t ftp_dtype_size(ftp_dtype_t dtype);

/* Slot count K for padded length T (0 for T == 0), -1 for invalid arguments. */
int64_t ftp_topk_slot_count(int64_t T, int32_t keep_q16);

/* Kept count k_b for n valid tokens (0 for n == 0), -1 for invalid arguments. */
int64_t ftp_topk_kept_count(int64_t n, int32_t keep_q16);

/* ---- FtpTopKGather ------------------------------------------------------------------------
 * hidden [B,T,D] dtype, scores [B,T] float32, valid [B,T] bool
 *   -> gathered [B,K,D] dtype, indices [B,K] int64 ascending, active [B,K] bool,
 *      K = ftp_topk_slot_count(T, keep_q16). Requires T <= FTP_MAX_TOKENS.
 */
size_t ftp_topk_gather_workspace_size(int64_t B, int64_t T);
cudaError_t ftp_topk_gather_launch(void const* hidden, float const* scores, uint8_t const* valid, void* gathered,
    int64_t* indices, uint8_t* active, ftp_dtype_t dtype, int64_t B, int64_t T, int64_t D, int32_t keep_q16,
    void* workspace, size_t workspace_size, cudaStream_t stream);

/* ---- FtpTopKScatter -----------------------------------------------------------------------
 * residual [B,T,D], rows [B,K,D], indices [B,K] int64, active [B,K] bool -> out [B,T,D].
 * Active indices must be distinct within a row (as FtpTopKGather makes them); an index outside
 * [0, T) is ignored. `out` must not alias `residual` or `rows`.
 */
size_t ftp_topk_scatter_workspace_size(int64_t B, int64_t T);
cudaError_t ftp_topk_scatter_launch(void const* residual, void const* rows, int64_t const* indices,
    uint8_t const* active, void* out, ftp_dtype_t dtype, int64_t B, int64_t T, int64_t K, int64_t D, void* workspace,
    size_t workspace_size, cudaStream_t stream);

/* ---- FtpThresholdGather -------------------------------------------------------------------
 * hidden [B,T,D], scores [B,T] float32, valid [B,T] bool, threshold
 *   -> gathered [N,D], rows [N] int64 (flat b*T+t, ascending), count [] int32 = N
 * (int32: TensorRT size tensors are kINT32; B*T must be < 2^31). `gathered` and `rows` must have room for the upper bound B*T rows; only the first N are
 * written. N stays on the device (count); the row copy reads it there.
 */
size_t ftp_threshold_gather_workspace_size(int64_t B, int64_t T);
cudaError_t ftp_threshold_gather_launch(void const* hidden, float const* scores, uint8_t const* valid,
    float threshold, void* gathered, int64_t* rows, int32_t* count, ftp_dtype_t dtype, int64_t B, int64_t T,
    int64_t D, void* workspace, size_t workspace_size, cudaStream_t stream);

/* ---- FtpRowScatter ------------------------------------------------------------------------
 * residual [B,T,D], rows_data [N,D], rows [N] int64 -> out [B,T,D].
 * Rows must be distinct; a row outside [0, B*T) is ignored. `out` must not alias the inputs.
 */
size_t ftp_row_scatter_workspace_size(int64_t B, int64_t T);
cudaError_t ftp_row_scatter_launch(void const* residual, void const* rows_data, int64_t const* rows, void* out,
    ftp_dtype_t dtype, int64_t B, int64_t T, int64_t N, int64_t D, void* workspace, size_t workspace_size,
    cudaStream_t stream);

/* ---- int32 <-> byte flags (the TensorRT glue: `valid` / `active` are int32 plugin tensors) ------
 * out[i] = in[i] != 0 for i < n, as 1 / 0. Asynchronous on `stream`; n == 0 launches nothing.
 */
cudaError_t ftp_flags_from_int32(int32_t const* in, uint8_t* out, int64_t n, cudaStream_t stream);
cudaError_t ftp_flags_to_int32(uint8_t const* in, int32_t* out, int64_t n, cudaStream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FTP_KERNELS_H */
