/*
 * FtpThresholdGather kernels.
 *
 * A token is kept iff valid && score >= threshold (float32). Kept flat indices b*T+t are compacted
 * in ascending order into `rows`, their number N into `count` (device memory, int32: TensorRT size tensors are kINT32), then the
 * kept hidden rows are copied to `gathered`. N never reaches the host: the row copy is launched
 * for the upper bound B*T rows and reads N on the device.
 *
 * Compaction: for M = B*T <= kSingleBlockMax (decode: M = batch) one thread block scans the flags
 * tile by tile; larger M use cub::DeviceSelect::Flagged (single-pass decoupled look-back) over a
 * materialised flat-index sequence and flag array in the workspace.
 */
#include "../common/ftpKernelCommon.cuh"

#include <cub/block/block_scan.cuh>
#include <cub/device/device_select.cuh>

namespace ftp
{
namespace
{

constexpr int kSelectThreads = 1024;
constexpr int64_t kSingleBlockMax = 16384;

__device__ __forceinline__ bool keep(float const* scores, uint8_t const* valid, float threshold, int64_t i)
{
    return valid[i] != 0 && scores[i] >= threshold;
}

__global__ void __launch_bounds__(kSelectThreads) thresholdSelectBlockKernel(float const* __restrict__ scores,
    uint8_t const* __restrict__ valid, float threshold, int64_t M, int64_t* __restrict__ rows,
    int32_t* __restrict__ count)
{
    using Scan = cub::BlockScan<int, kSelectThreads>;
    __shared__ typename Scan::TempStorage storage;
    int64_t carry = 0;
    for (int64_t base = 0; base < M; base += kSelectThreads)
    {
        int64_t const i = base + threadIdx.x;
        bool const k = i < M && keep(scores, valid, threshold, i);
        int offset;
        int total;
        Scan(storage).ExclusiveSum(k ? 1 : 0, offset, total);
        if (k)
        {
            rows[carry + offset] = i;
        }
        carry += total;
        __syncthreads();
    }
    if (threadIdx.x == 0)
    {
        *count = static_cast<int32_t>(carry); // carry <= M < 2^31 (checked by the launch)
    }
}

__global__ void thresholdFlagsKernel(float const* __restrict__ scores, uint8_t const* __restrict__ valid,
    float threshold, int64_t M, int64_t* __restrict__ iota, uint8_t* __restrict__ flags)
{
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < M;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    {
        iota[i] = i;
        flags[i] = keep(scores, valid, threshold, i) ? 1 : 0;
    }
}

size_t cubSelectBytes(int64_t M)
{
    size_t bytes = 0;
    cub::DeviceSelect::Flagged(nullptr, bytes, static_cast<int64_t const*>(nullptr),
        static_cast<uint8_t const*>(nullptr), static_cast<int64_t*>(nullptr), static_cast<int32_t*>(nullptr), M);
    return bytes;
}

//! Gather source: out row n < count <- hidden_flat[rows[n]].
struct FlatGatherSrc
{
    char const* hidden;
    int64_t const* flatRows;
    int32_t const* count;
    int64_t rowBytes;

    __device__ __forceinline__ int64_t numRows(int64_t maxRows) const
    {
        int64_t const n = *count;  // int32 on the device, widened
        return n < maxRows ? n : maxRows;
    }
    __device__ __forceinline__ char const* source(int64_t r) const
    {
        return hidden + flatRows[r] * rowBytes;
    }
};

} // namespace
} // namespace ftp

extern "C" size_t ftp_threshold_gather_workspace_size(int64_t B, int64_t T)
{
    using namespace ftp;
    int64_t const M = B * T;
    if (B <= 0 || T <= 0 || M <= kSingleBlockMax)
    {
        return 0;
    }
    return alignUp(static_cast<size_t>(M) * sizeof(int64_t)) + alignUp(static_cast<size_t>(M))
        + alignUp(cubSelectBytes(M));
}

extern "C" cudaError_t ftp_threshold_gather_launch(void const* hidden, float const* scores, uint8_t const* valid,
    float threshold, void* gathered, int64_t* rows, int32_t* count, ftp_dtype_t dtype, int64_t B, int64_t T,
    int64_t D, void* workspace, size_t /*workspace_size*/, cudaStream_t stream)
{
    using namespace ftp;
    if (!validDtype(dtype) || B < 0 || T < 0 || D < 0 || B * T > 0x7fffffff || count == nullptr)
    {
        return cudaErrorInvalidValue;
    }
    int64_t const M = B * T;
    if (M == 0)
    {
        return cudaMemsetAsync(count, 0, sizeof(int32_t), stream);
    }
    if (scores == nullptr || valid == nullptr || rows == nullptr || (D > 0 && (hidden == nullptr || gathered == nullptr)))
    {
        return cudaErrorInvalidValue;
    }
    cudaError_t err = cudaSuccess;
    if (M <= kSingleBlockMax)
    {
        thresholdSelectBlockKernel<<<1, kSelectThreads, 0, stream>>>(scores, valid, threshold, M, rows, count);
        err = cudaGetLastError();
    }
    else
    {
        // the caller sized `workspace` (ftp_kernels.h: workspace_size is not checked here)
        if (workspace == nullptr)
        {
            return cudaErrorInvalidValue;
        }
        WorkspaceCarver carve(workspace);
        auto* iota = carve.take<int64_t>(static_cast<size_t>(M) * sizeof(int64_t));
        auto* flags = carve.take<uint8_t>(static_cast<size_t>(M));
        size_t cubBytes = cubSelectBytes(M);
        void* cubTemp = carve.take<char>(cubBytes);
        int64_t blocks = (M + 255) / 256;
        blocks = blocks > 4096 ? 4096 : blocks;
        thresholdFlagsKernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(scores, valid, threshold, M, iota, flags);
        err = cudaGetLastError();
        if (err == cudaSuccess)
        {
            err = cub::DeviceSelect::Flagged(cubTemp, cubBytes, static_cast<int64_t const*>(iota),
                static_cast<uint8_t const*>(flags), rows, count, M, stream);
        }
    }
    if (err != cudaSuccess)
    {
        return err;
    }
    int64_t const rowBytes = D * static_cast<int64_t>(dtypeSize(dtype));
    FlatGatherSrc const src{static_cast<char const*>(hidden), rows, count, rowBytes};
    return launchCopyRows(gathered, src, M, rowBytes, reinterpret_cast<uintptr_t>(hidden), stream);
}
