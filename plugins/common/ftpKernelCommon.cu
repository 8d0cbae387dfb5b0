/*
 * Host-side helpers of the C API (ftp_kernels.h) shared by all four plugins.
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
