/*
 * FtpTopKScatter kernels.
 *
 * out = residual, except out[b, indices[b,j]] = rows[b,j] where active[b,j].
 * Two steps on the stream: (1) an int32 map [B*T] (workspace) set to -1, then the slot number of
 * every active row written at its destination; (2) one vectorised pass over the B*T output rows,
 * each read either from rows (mapped) or from residual. Every output row is written exactly once,
 * so the pass moves B*T rows instead of copying residual and then overwriting K rows.
 */
#include "../common/ftpKernelCommon.cuh"

namespace ftp
{
namespace
{

__global__ void topkScatterMapKernel(int64_t const* __restrict__ indices, uint8_t const* __restrict__ active,
    int32_t* __restrict__ map, int64_t B, int64_t T, int64_t K)
{
    int64_t const n = B * K;
    for (int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s < n;
         s += static_cast<int64_t>(gridDim.x) * blockDim.x)
    {
        int64_t const t = indices[s];
        if (active[s] != 0 && t >= 0 && t < T)
        {
            map[(s / K) * T + t] = static_cast<int32_t>(s);
        }
    }
}

} // namespace
} // namespace ftp

extern "C" size_t ftp_topk_scatter_workspace_size(int64_t B, int64_t T)
{
    if (B <= 0 || T <= 0)
    {
        return 0;
    }
    return ftp::alignUp(static_cast<size_t>(B * T) * sizeof(int32_t));
}

extern "C" cudaError_t ftp_topk_scatter_launch(void const* residual, void const* rows, int64_t const* indices,
    uint8_t const* active, void* out, ftp_dtype_t dtype, int64_t B, int64_t T, int64_t K, int64_t D,
    void* workspace, size_t /*workspace_size*/, cudaStream_t stream)
{
    using namespace ftp;
    if (!validDtype(dtype) || B < 0 || T < 0 || K < 0 || D < 0 || K > T || B * T > 0x7fffffff)
    {
        return cudaErrorInvalidValue;
    }
    if (B == 0 || T == 0 || D == 0)
    {
        return cudaSuccess;
    }
    // the caller sized `workspace` (ftp_kernels.h: workspace_size is not checked here)
    if (residual == nullptr || out == nullptr || workspace == nullptr
        || (K > 0 && (rows == nullptr || indices == nullptr || active == nullptr)))
    {
        return cudaErrorInvalidValue;
    }
    auto* map = static_cast<int32_t*>(workspace);
    cudaError_t err = cudaMemsetAsync(map, 0xff, static_cast<size_t>(B * T) * sizeof(int32_t), stream);
    if (err != cudaSuccess)
    {
        return err;
    }
    if (K > 0)
    {
        int64_t const n = B * K;
        int64_t blocks = (n + 255) / 256;
        blocks = blocks > 4096 ? 4096 : blocks;
        topkScatterMapKernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(indices, active, map, B, T, K);
        err = cudaGetLastError();
        if (err != cudaSuccess)
        {
            return err;
        }
    }
    int64_t const rowBytes = D * static_cast<int64_t>(dtypeSize(dtype));
    ScatterMapSrc const src{static_cast<char const*>(residual), static_cast<char const*>(rows), map, rowBytes};
    uintptr_t const alignBits = reinterpret_cast<uintptr_t>(residual) | reinterpret_cast<uintptr_t>(rows);
    return launchCopyRows(out, src, B * T, rowBytes, alignBits, stream);
}
