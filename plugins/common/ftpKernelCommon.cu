/*
 * Helpers of the C API (ftp_kernels.h) shared by all four plugins: dtype size, slot counts, and the
 * int32 <-> byte flag conversions the TensorRT glue uses for `valid` / `active`.
 */
#include "ftpKernelCommon.cuh"

extern "C" size_t ftp_dtype_size(ftp_dtype_t dtype)
{
    return ftp::dtypeSize(dtype);
}

extern "C" int64_t ftp_topk_slot_count(int64_t T, int32_t keep_q16)
{
    if (T < 0 || T > FTP_MAX_TOKENS || keep_q16 < 1 || keep_q16 > 65536)
    {
        return -1;
    }
    return ftp::clampedCount(T, keep_q16);
}

extern "C" int64_t ftp_topk_kept_count(int64_t n, int32_t keep_q16)
{
    return ftp_topk_slot_count(n, keep_q16);
}

namespace
{

constexpr int kFlagThreads = 256;
constexpr int64_t kFlagMaxBlocks = 4096;

template <typename In, typename Out>
__global__ void __launch_bounds__(kFlagThreads) flagsKernel(In const* __restrict__ in, Out* __restrict__ out, int64_t n)
{
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * kFlagThreads + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * kFlagThreads)
    {
        out[i] = in[i] != 0 ? Out(1) : Out(0);
    }
}

template <typename In, typename Out>
cudaError_t launchFlags(In const* in, Out* out, int64_t n, cudaStream_t stream)
{
    if (n < 0 || (n > 0 && (in == nullptr || out == nullptr)))
    {
        return cudaErrorInvalidValue;
    }
    if (n == 0)
    {
        return cudaSuccess;
    }
    int64_t blocks = (n + kFlagThreads - 1) / kFlagThreads;
    blocks = blocks > kFlagMaxBlocks ? kFlagMaxBlocks : blocks;
    flagsKernel<In, Out><<<static_cast<unsigned>(blocks), kFlagThreads, 0, stream>>>(in, out, n);
    return cudaGetLastError();
}

} // namespace

extern "C" cudaError_t ftp_flags_from_int32(int32_t const* in, uint8_t* out, int64_t n, cudaStream_t stream)
{
    return launchFlags(in, out, n, stream);
}

extern "C" cudaError_t ftp_flags_to_int32(uint8_t const* in, int32_t* out, int64_t n, cudaStream_t stream)
{
    return launchFlags(in, out, n, stream);
}
