/*
 * FtpTopKGather kernels.
 *
 * Selection: one thread block per row (batch entry). Every token gets a unique 51-bit rank key
 * (ftp::rankKey), so "the first K of a stable descending sort" is "every token whose key is >= the
 * key of rank K-1". The block finds the keys of rank K-1 and k_b-1 with an 11-bit-digit radix
 * select (5 histogram passes; both targets share a histogram while their digits agree), then
 * compacts the selected tokens in position order with block-wide prefix sums, which yields the
 * ascending indices directly (no second sort). Keys live in registers for T <= 8192 and are
 * recomputed from scores/valid (coalesced reads) for longer rows, up to FTP_MAX_TOKENS = 131072.
 * No workspace, no host synchronisation, no dependence on TensorRT's TopK (k <= 3840).
 *
 * Gather: a vectorised row copy over the B*K output rows (ftp::launchCopyRows).
 */
#include "../common/ftpKernelCommon.cuh"

#include <cub/block/block_scan.cuh>

namespace ftp
{
namespace
{

constexpr int kDigitBits = 11;
constexpr int kBins = 1 << kDigitBits;
constexpr int kPasses = (kKeyBits + kDigitBits - 1) / kDigitBits;

//! Adds 1 to hist[digit] for every lane with pred, one shared atomic per distinct digit per warp.
//! Must be called by all 32 lanes of the warp.
__device__ __forceinline__ void warpHistAdd(unsigned int* hist, unsigned int digit, bool pred)
{
    unsigned int const lanes = __ballot_sync(0xffffffffu, pred);
    if (pred)
    {
        unsigned int const peers = __match_any_sync(lanes, digit);
        if (static_cast<int>(threadIdx.x & 31) == __ffs(peers) - 1)
        {
            atomicAdd(&hist[digit], static_cast<unsigned int>(__popc(peers)));
        }
    }
}

template <int THREADS, int ITEMS, bool IN_REGS>
__global__ void __launch_bounds__(THREADS) topkSelectKernel(float const* __restrict__ scores,
    uint8_t const* __restrict__ valid, int32_t T, int32_t K, int32_t keepQ16,
    int64_t* __restrict__ indices, uint8_t* __restrict__ active)
{
    static_assert(kBins % THREADS == 0, "bins must split evenly over the threads");
    constexpr int kBinsPerThread = kBins / THREADS;
    using PairScan = cub::BlockScan<unsigned long long, THREADS>;
    using IntScan = cub::BlockScan<int, THREADS>;

    __shared__ union
    {
        typename PairScan::TempStorage pair;
        typename IntScan::TempStorage count;
    } scanStorage;
    __shared__ unsigned int hist[2][kBins];
    __shared__ int sValid;
    __shared__ unsigned int sDigit[2];
    __shared__ int sRem[2];

    int64_t const row = blockIdx.x;
    scores += row * T;
    valid += row * T;
    indices += row * K;
    active += row * K;

    auto keyAt = [&](int32_t t) -> uint64_t { return rankKey(scores[t], valid[t] != 0, t); };

    // 1. keys (in registers when they fit) and the row's valid-token count n_b
    uint64_t keys[IN_REGS ? ITEMS : 1];
    int nValid = 0;
    if constexpr (IN_REGS)
    {
#pragma unroll
        for (int i = 0; i < ITEMS; ++i)
        {
            int32_t const t = i * THREADS + static_cast<int32_t>(threadIdx.x);
            keys[i] = 0;
            if (t < T)
            {
                bool const v = valid[t] != 0;
                keys[i] = rankKey(scores[t], v, t);
                nValid += v ? 1 : 0;
            }
        }
    }
    else
    {
        for (int32_t t = threadIdx.x; t < T; t += THREADS)
        {
            nValid += valid[t] != 0 ? 1 : 0;
        }
    }
    if (threadIdx.x == 0)
    {
        sValid = 0;
    }
    __syncthreads();
    if (nValid != 0)
    {
        atomicAdd(&sValid, nValid);
    }
    __syncthreads();
    int32_t const kb = static_cast<int32_t>(clampedCount(sValid, keepQ16));

    // 2. radix select of the keys ranked K-1 (target 0) and kb-1 (target 1), descending
    int rem0 = K - 1;
    int rem1 = kb > 0 ? kb - 1 : K - 1;
    uint64_t prefix0 = 0;
    uint64_t prefix1 = 0;
#pragma unroll 1
    for (int pass = 0; pass < kPasses; ++pass)
    {
        int const top = kKeyBits - pass * kDigitBits;           // bits [shift, top) this pass
        int const shift = top > kDigitBits ? top - kDigitBits : 0;
        uint64_t const hiMask = ~uint64_t(0) << top;            // bits already decided
        unsigned int const digitMask = (1u << (top - shift)) - 1u;
        bool const shared = prefix0 == prefix1;                 // block-uniform

        for (int i = threadIdx.x; i < kBins; i += THREADS)
        {
            hist[0][i] = 0;
            hist[1][i] = 0;
        }
        __syncthreads();

        auto account = [&](uint64_t key, bool inRange) {
            unsigned int const digit = static_cast<unsigned int>(key >> shift) & digitMask;
            uint64_t const hi = key & hiMask;
            warpHistAdd(hist[0], digit, inRange && hi == prefix0);
            if (!shared)
            {
                warpHistAdd(hist[1], digit, inRange && hi == prefix1);
            }
        };
        if constexpr (IN_REGS)
        {
#pragma unroll
            for (int i = 0; i < ITEMS; ++i)
            {
                if (i * THREADS >= T)
                {
                    break; // block-uniform
                }
                account(keys[i], i * THREADS + static_cast<int32_t>(threadIdx.x) < T);
            }
        }
        else
        {
            for (int32_t base = 0; base < T; base += THREADS)
            {
                int32_t const t = base + static_cast<int32_t>(threadIdx.x);
                account(t < T ? keyAt(t) : 0, t < T);
            }
        }
        __syncthreads();

        // bins in descending digit order; pack both targets' counts into one 64-bit scan
        unsigned long long counts[kBinsPerThread];
        unsigned long long local = 0;
#pragma unroll
        for (int j = 0; j < kBinsPerThread; ++j)
        {
            int const bin = kBins - 1 - (static_cast<int>(threadIdx.x) * kBinsPerThread + j);
            unsigned long long const c0 = hist[0][bin];
            unsigned long long const c1 = shared ? c0 : hist[1][bin];
            counts[j] = (c0 << 32) | c1;
            local += counts[j];
        }
        unsigned long long running;
        PairScan(scanStorage.pair).ExclusiveSum(local, running);
#pragma unroll
        for (int j = 0; j < kBinsPerThread; ++j)
        {
            int const bin = kBins - 1 - (static_cast<int>(threadIdx.x) * kBinsPerThread + j);
            int const below0 = static_cast<int>(running >> 32);
            int const below1 = static_cast<int>(running & 0xffffffffull);
            int const c0 = static_cast<int>(counts[j] >> 32);
            int const c1 = static_cast<int>(counts[j] & 0xffffffffull);
            if (c0 > 0 && below0 <= rem0 && rem0 < below0 + c0)
            {
                sDigit[0] = static_cast<unsigned int>(bin);
                sRem[0] = rem0 - below0;
            }
            if (c1 > 0 && below1 <= rem1 && rem1 < below1 + c1)
            {
                sDigit[1] = static_cast<unsigned int>(bin);
                sRem[1] = rem1 - below1;
            }
            running += counts[j];
        }
        __syncthreads();
        prefix0 |= static_cast<uint64_t>(sDigit[0]) << shift;
        prefix1 |= static_cast<uint64_t>(sDigit[1]) << shift;
        rem0 = sRem[0];
        rem1 = sRem[1];
        __syncthreads();
    }
    uint64_t const kthKey = prefix0;    // key of rank K-1: selected iff key >= kthKey
    uint64_t const activeKey = prefix1; // key of rank kb-1: active iff kb > 0 && key >= activeKey

    // 3. compaction in position order -> ascending indices
    int carry = 0;
    auto emit = [&](uint64_t key, int32_t t, bool inRange) {
        bool const sel = inRange && key >= kthKey;
        int offset;
        int total;
        IntScan(scanStorage.count).ExclusiveSum(sel ? 1 : 0, offset, total);
        if (sel)
        {
            indices[carry + offset] = t;
            active[carry + offset] = (kb > 0 && key >= activeKey) ? 1 : 0;
        }
        carry += total;
        __syncthreads(); // scan storage reuse
    };
    if constexpr (IN_REGS)
    {
#pragma unroll
        for (int i = 0; i < ITEMS; ++i)
        {
            if (i * THREADS >= T)
            {
                break;
            }
            int32_t const t = i * THREADS + static_cast<int32_t>(threadIdx.x);
            emit(keys[i], t, t < T);
        }
    }
    else
    {
        for (int32_t base = 0; base < T; base += THREADS)
        {
            int32_t const t = base + static_cast<int32_t>(threadIdx.x);
            emit(t < T ? keyAt(t) : 0, t, t < T);
        }
    }
}

//! Gather source: out row r = b*K + j <- hidden[b, indices[r]].
struct TopKGatherSrc
{
    char const* hidden;
    int64_t const* indices;
    int64_t T;
    int64_t K;
    int64_t rowBytes;

    __device__ __forceinline__ int64_t numRows(int64_t maxRows) const
    {
        return maxRows;
    }
    __device__ __forceinline__ char const* source(int64_t r) const
    {
        int64_t const t = indices[r];
        if (t < 0 || t >= T)
        {
            return nullptr;
        }
        return hidden + ((r / K) * T + t) * rowBytes;
    }
};

} // namespace
} // namespace ftp

extern "C" size_t ftp_topk_gather_workspace_size(int64_t, int64_t)
{
    return 0;
}

extern "C" cudaError_t ftp_topk_gather_launch(void const* hidden, float const* scores, uint8_t const* valid,
    void* gathered, int64_t* indices, uint8_t* active, ftp_dtype_t dtype, int64_t B, int64_t T, int64_t D,
    int32_t keep_q16, void* /*workspace*/, size_t /*workspace_size*/, cudaStream_t stream)
{
    using namespace ftp;
    int64_t const K = ftp_topk_slot_count(T, keep_q16);
    if (!validDtype(dtype) || B < 0 || D < 0 || K < 0 || B > 0x7fffffff)
    {
        return cudaErrorInvalidValue;
    }
    if (B == 0 || K == 0)
    {
        return cudaSuccess;
    }
    if (scores == nullptr || valid == nullptr || indices == nullptr || active == nullptr
        || (D > 0 && (hidden == nullptr || gathered == nullptr)))
    {
        return cudaErrorInvalidValue;
    }
    auto const t32 = static_cast<int32_t>(T);
    auto const k32 = static_cast<int32_t>(K);
    auto const grid = static_cast<unsigned>(B);
    if (T <= 1024)
    {
        topkSelectKernel<256, 4, true><<<grid, 256, 0, stream>>>(scores, valid, t32, k32, keep_q16, indices, active);
    }
    else if (T <= 8192)
    {
        topkSelectKernel<512, 16, true><<<grid, 512, 0, stream>>>(scores, valid, t32, k32, keep_q16, indices, active);
    }
    else
    {
        topkSelectKernel<512, 1, false><<<grid, 512, 0, stream>>>(scores, valid, t32, k32, keep_q16, indices, active);
    }
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
    {
        return err;
    }
    int64_t const rowBytes = D * static_cast<int64_t>(dtypeSize(dtype));
    TopKGatherSrc const src{static_cast<char const*>(hidden), indices, T, K, rowBytes};
    return launchCopyRows(gathered, src, B * K, rowBytes, reinterpret_cast<uintptr_t>(hidden), stream);
}
