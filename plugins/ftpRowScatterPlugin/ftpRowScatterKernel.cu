/*
 * FtpRowScatter kernels.
 *
 * out = residual with out.view(B*T, D)[rows[n]] = rows_data[n]. Same two steps as FtpTopKScatter:
 * an int32 map [B*T] (workspace, -1 = keep residual) filled from `rows`, then one vectorised pass
 * that writes every output row exactly once.
 */
#include "../common/ftpKernelCommon.cuh"

namespace ftp
{
namespace
{

__global__ void rowScatterMapKernel(int64_t const* __restrict__ rows, int32_t* __restrict__ map, int64_t N, int64_t M)
{
    for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < N;
         n += static_cast<int64_t>(gridDim.x) * blockDim.x)
    {
        int64_t const r = rows[n];
        if (r >= 0 && r < M)
        {
            map[r] = static_cast<int32_t>(n);
        }
    }
}

} // namespace
} // namespace ftp

extern "C" size_t ftp_row_scatter_workspace_size(int64_t B, int64_t T)
{
    if (B <= 0 || T <= 0)
    {
        return 0;
    }
    return ftp::alignUp(static_cast<size_t>(B * T) * sizeof(int32_t));
}

extern "C" cudaError_t ftp_row_scatter_launch(void const* residual, void const* rows_data, int64_t const* rows,
    void* out, ftp_dtype_t dtype, int64_t B, int64_t T, int64_t N, int64_t D, void* workspace, size_t /*workspace_size*/,
    cudaStream_t stream)
{
    using namespace ftp;
    if (!validDtype(dtype) || B < 0 || T < 0 || N < 0 || D < 0 || B * T > 0x7fffffff || N > 0x7fffffff)
    {
        return cudaErrorInvalidValue;
    }
    if (B == 0 || T == 0 || D == 0)
    {
        return cudaSuccess;
    }
    // the caller sized `workspace` (ftp_kernels.h: workspace_size is not checked here)
    if (residual == nullptr || out == nullptr || workspace == nullptr
        || (N > 0 && (rows_data == nullptr || rows == nullptr)))
    {
        return cudaErrorInvalidValue;
    }
    int64_t const M = B * T;
    auto* map = static_cast<int32_t*>(workspace);
    cudaError_t err = cudaMemsetAsync(map, 0xff, static_cast<size_t>(M) * sizeof(int32_t), stream);
    if (err != cudaSuccess)
    {
        return err;
    }
    if (N > 0)
    {
        int64_t blocks = (N + 255) / 256;
        blocks = blocks > 4096 ? 4096 : blocks;
        rowScatterMapKernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(rows, map, N, M);
        err = cudaGetLastError();
        if (err != cudaSuccess)
        {
            return err;
        }
    }
    int64_t const rowBytes = D * static_cast<int64_t>(dtypeSize(dtype));
    ScatterMapSrc const src{static_cast<char const*>(residual), static_cast<char const*>(rows_data), map, rowBytes};
    uintptr_t const alignBits = reinterpret_cast<uintptr_t>(residual) | reinterpret_cast<uintptr_t>(rows_data);
    return launchCopyRows(out, src, M, rowBytes, alignBits, stream);
}
