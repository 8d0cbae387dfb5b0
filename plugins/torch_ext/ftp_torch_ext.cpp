/*
 * PyTorch binding of the ftp kernels (the same .cu files the TensorRT plugins run), built on first
 * use by ftp_export/trt/kernels_ext.py with torch.utils.cpp_extension.load.
 *
 * Functions write into caller-provided output tensors (so tests can poison them first); the
 * allocating wrappers live in kernels_ext.py. Everything runs on the current CUDA stream of the
 * tensors' device; scratch memory comes from PyTorch's caching allocator.
 */
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "ftp_kernels.h"

namespace
{

ftp_dtype_t hiddenDtype(at::Tensor const& t)
{
    switch (t.scalar_type())
    {
    case at::kFloat: return FTP_DTYPE_FLOAT32;
    case at::kHalf: return FTP_DTYPE_FLOAT16;
    case at::kBFloat16: return FTP_DTYPE_BFLOAT16;
    default: TORCH_CHECK(false, "ftp kernels: hidden dtype must be float32, float16 or bfloat16, got ", t.scalar_type());
    }
    return FTP_DTYPE_FLOAT32;
}

void checkTensor(at::Tensor const& t, char const* name, at::ScalarType dtype, int64_t dim, at::Device device)
{
    TORCH_CHECK(t.is_cuda(), "ftp kernels: ", name, " must be a CUDA tensor");
    TORCH_CHECK(t.device() == device, "ftp kernels: ", name, " is on ", t.device(), ", expected ", device);
    TORCH_CHECK(t.scalar_type() == dtype, "ftp kernels: ", name, " must be ", dtype, ", got ", t.scalar_type());
    TORCH_CHECK(t.dim() == dim, "ftp kernels: ", name, " must have ", dim, " dims, got ", t.sizes());
    TORCH_CHECK(t.is_contiguous(), "ftp kernels: ", name, " must be contiguous");
}

void checkShape(at::Tensor const& t, char const* name, at::IntArrayRef expected)
{
    TORCH_CHECK(t.sizes() == expected, "ftp kernels: ", name, " has shape ", t.sizes(), ", expected ", expected);
}

void checkCuda(cudaError_t err, char const* what)
{
    TORCH_CHECK(err == cudaSuccess, "ftp kernels: ", what, " failed: ", cudaGetErrorString(err));
}

at::Tensor workspace(size_t bytes, at::Device device)
{
    return at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)}, at::TensorOptions().dtype(at::kByte).device(device));
}

int64_t slotCount(int64_t T, int64_t keepQ16)
{
    TORCH_CHECK(keepQ16 >= 1 && keepQ16 <= 65536, "ftp kernels: keep_q16 must be in 1..65536");
    int64_t const k = ftp_topk_slot_count(T, static_cast<int32_t>(keepQ16));
    TORCH_CHECK(k >= 0, "ftp kernels: invalid T / keep_q16 (T <= ", FTP_MAX_TOKENS, ", keep_q16 in 1..65536)");
    return k;
}

void topkGatherOut(at::Tensor const& hidden, at::Tensor const& scores, at::Tensor const& valid, int64_t keepQ16,
    at::Tensor& gathered, at::Tensor& indices, at::Tensor& active)
{
    auto const dev = hidden.device();
    checkTensor(hidden, "hidden", hidden.scalar_type(), 3, dev);
    ftp_dtype_t const dtype = hiddenDtype(hidden);
    int64_t const B = hidden.size(0), T = hidden.size(1), D = hidden.size(2);
    int64_t const K = slotCount(T, keepQ16);
    checkTensor(scores, "scores", at::kFloat, 2, dev);
    checkTensor(valid, "valid", at::kBool, 2, dev);
    checkShape(scores, "scores", {B, T});
    checkShape(valid, "valid", {B, T});
    checkTensor(gathered, "gathered", hidden.scalar_type(), 3, dev);
    checkTensor(indices, "indices", at::kLong, 2, dev);
    checkTensor(active, "active", at::kBool, 2, dev);
    checkShape(gathered, "gathered", {B, K, D});
    checkShape(indices, "indices", {B, K});
    checkShape(active, "active", {B, K});
    c10::cuda::CUDAGuard guard(dev);
    size_t const wsBytes = ftp_topk_gather_workspace_size(B, T);
    at::Tensor ws = workspace(wsBytes, dev);
    checkCuda(ftp_topk_gather_launch(hidden.data_ptr(), scores.data_ptr<float>(),
                  reinterpret_cast<uint8_t const*>(valid.data_ptr<bool>()), gathered.data_ptr(),
                  indices.data_ptr<int64_t>(), reinterpret_cast<uint8_t*>(active.data_ptr<bool>()), dtype, B, T, D,
                  static_cast<int32_t>(keepQ16), ws.data_ptr(), wsBytes,
                  c10::cuda::getCurrentCUDAStream().stream()),
        "ftp_topk_gather_launch");
}

void topkScatterOut(at::Tensor const& residual, at::Tensor const& rows, at::Tensor const& indices,
    at::Tensor const& active, at::Tensor& out)
{
    auto const dev = residual.device();
    checkTensor(residual, "residual", residual.scalar_type(), 3, dev);
    ftp_dtype_t const dtype = hiddenDtype(residual);
    int64_t const B = residual.size(0), T = residual.size(1), D = residual.size(2);
    checkTensor(indices, "indices", at::kLong, 2, dev);
    int64_t const K = indices.size(1);
    checkTensor(rows, "rows", residual.scalar_type(), 3, dev);
    checkTensor(active, "active", at::kBool, 2, dev);
    checkShape(rows, "rows", {B, K, D});
    checkShape(indices, "indices", {B, K});
    checkShape(active, "active", {B, K});
    checkTensor(out, "out", residual.scalar_type(), 3, dev);
    checkShape(out, "out", {B, T, D});
    TORCH_CHECK(K <= T, "ftp kernels: more slots than tokens");
    c10::cuda::CUDAGuard guard(dev);
    size_t const wsBytes = ftp_topk_scatter_workspace_size(B, T);
    at::Tensor ws = workspace(wsBytes, dev);
    checkCuda(ftp_topk_scatter_launch(residual.data_ptr(), rows.data_ptr(), indices.data_ptr<int64_t>(),
                  reinterpret_cast<uint8_t const*>(active.data_ptr<bool>()), out.data_ptr(), dtype, B, T, K, D,
                  ws.data_ptr(), wsBytes, c10::cuda::getCurrentCUDAStream().stream()),
        "ftp_topk_scatter_launch");
}

void thresholdGatherOut(at::Tensor const& hidden, at::Tensor const& scores, at::Tensor const& valid, double threshold,
    at::Tensor& gathered, at::Tensor& rows, at::Tensor& count)
{
    auto const dev = hidden.device();
    checkTensor(hidden, "hidden", hidden.scalar_type(), 3, dev);
    ftp_dtype_t const dtype = hiddenDtype(hidden);
    int64_t const B = hidden.size(0), T = hidden.size(1), D = hidden.size(2);
    checkTensor(scores, "scores", at::kFloat, 2, dev);
    checkTensor(valid, "valid", at::kBool, 2, dev);
    checkShape(scores, "scores", {B, T});
    checkShape(valid, "valid", {B, T});
    checkTensor(gathered, "gathered", hidden.scalar_type(), 2, dev);
    checkTensor(rows, "rows", at::kLong, 1, dev);
    checkTensor(count, "count", at::kLong, 0, dev);
    checkShape(gathered, "gathered (upper bound B*T rows)", {B * T, D});
    checkShape(rows, "rows (upper bound B*T)", {B * T});
    c10::cuda::CUDAGuard guard(dev);
    size_t const wsBytes = ftp_threshold_gather_workspace_size(B, T);
    at::Tensor ws = workspace(wsBytes, dev);
    checkCuda(ftp_threshold_gather_launch(hidden.data_ptr(), scores.data_ptr<float>(),
                  reinterpret_cast<uint8_t const*>(valid.data_ptr<bool>()), static_cast<float>(threshold),
                  gathered.data_ptr(), rows.data_ptr<int64_t>(), count.data_ptr<int64_t>(), dtype, B, T, D,
                  ws.data_ptr(), wsBytes, c10::cuda::getCurrentCUDAStream().stream()),
        "ftp_threshold_gather_launch");
}

void rowScatterOut(at::Tensor const& residual, at::Tensor const& rowsData, at::Tensor const& rows, at::Tensor& out)
{
    auto const dev = residual.device();
    checkTensor(residual, "residual", residual.scalar_type(), 3, dev);
    ftp_dtype_t const dtype = hiddenDtype(residual);
    int64_t const B = residual.size(0), T = residual.size(1), D = residual.size(2);
    checkTensor(rows, "rows", at::kLong, 1, dev);
    int64_t const N = rows.size(0);
    checkTensor(rowsData, "rows_data", residual.scalar_type(), 2, dev);
    checkShape(rowsData, "rows_data", {N, D});
    checkTensor(out, "out", residual.scalar_type(), 3, dev);
    checkShape(out, "out", {B, T, D});
    c10::cuda::CUDAGuard guard(dev);
    size_t const wsBytes = ftp_row_scatter_workspace_size(B, T);
    at::Tensor ws = workspace(wsBytes, dev);
    checkCuda(ftp_row_scatter_launch(residual.data_ptr(), rowsData.data_ptr(), rows.data_ptr<int64_t>(), out.data_ptr(),
                  dtype, B, T, N, D, ws.data_ptr(), wsBytes, c10::cuda::getCurrentCUDAStream().stream()),
        "ftp_row_scatter_launch");
}

} // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.doc() = "ftp-export token-routing kernels (plugins/, same code as the TensorRT plugins)";
    m.def("slot_count", &slotCount, "K for padded length T", py::arg("T"), py::arg("keep_q16"));
    m.def("topk_gather_out", &topkGatherOut, "FtpTopKGather into (gathered [B,K,D], indices [B,K], active [B,K])",
        py::arg("hidden"), py::arg("scores"), py::arg("valid"), py::arg("keep_q16"),
        py::arg("gathered"), py::arg("indices"), py::arg("active"));
    m.def("topk_scatter_out", &topkScatterOut, "FtpTopKScatter into out [B,T,D]", py::arg("residual"), py::arg("rows"),
        py::arg("indices"), py::arg("active"), py::arg("out"));
    m.def("threshold_gather_out", &thresholdGatherOut,
        "FtpThresholdGather into (gathered [B*T,D], rows [B*T], count []); first count rows are valid",
        py::arg("hidden"), py::arg("scores"), py::arg("valid"), py::arg("threshold"), py::arg("gathered"),
        py::arg("rows"), py::arg("count"));
    m.def("row_scatter_out", &rowScatterOut, "FtpRowScatter into out [B,T,D]", py::arg("residual"),
        py::arg("rows_data"), py::arg("rows"), py::arg("out"));
}
