/*
 * Device-side helpers shared by the ftp kernels: the rank key, slot counts, workspace carving and a
 * vectorised row-copy kernel. Included by the plugins' .cu files only (not by the TensorRT glue).
 */
#ifndef FTP_KERNEL_COMMON_CUH
#define FTP_KERNEL_COMMON_CUH

#include "ftp_kernels.h"

#include <cuda_runtime.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define FTP_HD __host__ __device__ __forceinline__
#else
#define FTP_HD inline
#endif

namespace ftp
{

constexpr int kTieBits = 17; // position bits of the rank key (FTP_MAX_TOKENS = 2^17)
constexpr int kKeyBits = 51; // the rank key of both modes fits in bits [0, 51)
constexpr int kCopyThreads = 256;
constexpr int64_t kCopyMaxBlocks = 8192;
constexpr size_t kWorkspaceAlign = 256;

static_assert((1 << kTieBits) == FTP_MAX_TOKENS, "tie field must cover FTP_MAX_TOKENS positions");

FTP_HD bool validDtype(int32_t dtype)
{
    return dtype == FTP_DTYPE_FLOAT32 || dtype == FTP_DTYPE_FLOAT16 || dtype == FTP_DTYPE_BFLOAT16;
}

FTP_HD size_t dtypeSize(int32_t dtype)
{
    return dtype == FTP_DTYPE_FLOAT32 ? 4 : (dtype == FTP_DTYPE_FLOAT16 || dtype == FTP_DTYPE_BFLOAT16) ? 2 : 0;
}

//! count(n) = ceil(n * (2*keep_q16 - 1) / 131072) (ftp_export/routing/selection.py).
FTP_HD int64_t keepCount(int64_t n, int32_t keepQ16)
{
    return (n * (2 * static_cast<int64_t>(keepQ16) - 1) + 131071) / 131072;
}

//! K (for n = T) or k_b (for n = valid tokens of a row): 0 if n == 0, else min(n, max(1, count(n))).
FTP_HD int64_t clampedCount(int64_t n, int32_t keepQ16)
{
    if (n <= 0)
    {
        return 0;
    }
    int64_t const c = keepCount(n, keepQ16);
    return c < 1 ? 1 : (c > n ? n : c);
}

#if defined(__CUDACC__)

//! Unique, unsigned rank key of token t: larger = ranked first. selection.order_key + 2^50 (makes it
//! non-negative, same order); see ftp_kernels.h.
__device__ __forceinline__ uint64_t rankKey(float score, bool valid, int32_t t)
{
    uint64_t const tie = static_cast<uint64_t>((1 << kTieBits) - 1 - t);
    int64_t q = -(int64_t(1) << 33);
    if (valid)
    {
        float const c = fminf(fmaxf(score, -256.0f), 256.0f);
        q = static_cast<int64_t>(floorf(c * 16777216.0f)); // exact: power-of-two scaling
    }
    int64_t const key = q * (int64_t(1) << kTieBits) + static_cast<int64_t>(tie);
    return static_cast<uint64_t>(key + (int64_t(1) << 50));
}

//! Carves 256-byte aligned pieces out of a workspace.
struct WorkspaceCarver
{
    char* base;
    size_t offset{0};

    __host__ explicit WorkspaceCarver(void* ws)
        : base(static_cast<char*>(ws))
    {
    }

    template <typename T>
    __host__ T* take(size_t bytes)
    {
        T* p = reinterpret_cast<T*>(base + offset);
        offset += (bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
        return p;
    }
};

__host__ inline size_t alignUp(size_t bytes)
{
    return (bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
}

// ---- row copy ------------------------------------------------------------------------------
//
// dst row r (r < src.numRows(maxRows)) <- the row src.source(r) points at (nullptr: row left as is).
// Rows are copied as raw bytes with the widest vector V that the row size and every base
// pointer allow: 16-byte uint4 when D * sizeof(dtype) % 16 == 0 and the pointers are 16-byte
// aligned, else 8, 4, 2 or 1 byte.

template <typename V, typename Src>
__global__ void __launch_bounds__(kCopyThreads) copyRowsKernel(
    char* __restrict__ dst, Src src, int64_t maxRows, int64_t rowBytes, int tprLog2)
{
    int64_t const nRows = src.numRows(maxRows);
    int64_t const nVec = rowBytes / static_cast<int64_t>(sizeof(V));
    int const tpr = 1 << tprLog2;
    int const rowsPerBlock = kCopyThreads >> tprLog2;
    int const lane = threadIdx.x & (tpr - 1);
    for (int64_t r = static_cast<int64_t>(blockIdx.x) * rowsPerBlock + (threadIdx.x >> tprLog2); r < nRows;
         r += static_cast<int64_t>(gridDim.x) * rowsPerBlock)
    {
        char const* s = src.source(r);
        if (s == nullptr)
        {
            continue;
        }
        V const* __restrict__ sv = reinterpret_cast<V const*>(s);
        V* __restrict__ dv = reinterpret_cast<V*>(dst + r * rowBytes);
#pragma unroll 4
        for (int64_t v = lane; v < nVec; v += tpr)
        {
            dv[v] = sv[v];
        }
    }
}

template <typename V, typename Src>
__host__ cudaError_t launchCopyRowsAs(void* dst, Src const& src, int64_t maxRows, int64_t rowBytes, cudaStream_t stream)
{
    int64_t const nVec = rowBytes / static_cast<int64_t>(sizeof(V));
    int tprLog2 = 0;
    while ((int64_t(1) << tprLog2) < nVec && (1 << tprLog2) < kCopyThreads)
    {
        ++tprLog2;
    }
    int64_t const rowsPerBlock = kCopyThreads >> tprLog2;
    int64_t blocks = (maxRows + rowsPerBlock - 1) / rowsPerBlock;
    blocks = blocks > kCopyMaxBlocks ? kCopyMaxBlocks : blocks;
    copyRowsKernel<V, Src><<<static_cast<unsigned>(blocks), kCopyThreads, 0, stream>>>(
        static_cast<char*>(dst), src, maxRows, rowBytes, tprLog2);
    return cudaGetLastError();
}

//! alignBits: the OR of every base pointer the copy reads or writes.
template <typename Src>
__host__ cudaError_t launchCopyRows(
    void* dst, Src const& src, int64_t maxRows, int64_t rowBytes, uintptr_t alignBits, cudaStream_t stream)
{
    if (maxRows <= 0 || rowBytes <= 0)
    {
        return cudaSuccess;
    }
    uintptr_t const a = alignBits | reinterpret_cast<uintptr_t>(dst) | static_cast<uintptr_t>(rowBytes);
    if (a % 16 == 0)
    {
        return launchCopyRowsAs<uint4>(dst, src, maxRows, rowBytes, stream);
    }
    if (a % 8 == 0)
    {
        return launchCopyRowsAs<uint2>(dst, src, maxRows, rowBytes, stream);
    }
    if (a % 4 == 0)
    {
        return launchCopyRowsAs<uint32_t>(dst, src, maxRows, rowBytes, stream);
    }
    if (a % 2 == 0)
    {
        return launchCopyRowsAs<uint16_t>(dst, src, maxRows, rowBytes, stream);
    }
    return launchCopyRowsAs<uint8_t>(dst, src, maxRows, rowBytes, stream);
}

//! Row source for scatters: out row r <- rows[map[r]] if map[r] >= 0, else residual[r].
struct ScatterMapSrc
{
    char const* residual;
    char const* rows;
    int32_t const* map;
    int64_t rowBytes;

    __device__ __forceinline__ int64_t numRows(int64_t maxRows) const
    {
        return maxRows;
    }
    __device__ __forceinline__ char const* source(int64_t r) const
    {
        int32_t const m = map[r];
        return m >= 0 ? rows + static_cast<int64_t>(m) * rowBytes : residual + r * rowBytes;
    }
};

#endif // __CUDACC__

} // namespace ftp

#endif // FTP_KERNEL_COMMON_CUH
