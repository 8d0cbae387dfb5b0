/*
 * PyTorch binding of the ftp kernels (the same .cu files the TensorRT plugins run), built on first
 * use by ftp_export/trt/kernels_ext.py with torch.utils.cpp_extension.load.
 *
 * Functions write into caller-provided output tensors (so tests can poison them first) and take
 * the scratch memory as a caller-provided uint8 `workspace` tensor (size from the *_workspace_size
 * functions), as the TensorRT glue does: a launch allocates nothing and never synchronises, so it
 * can be captured in a CUDA graph. Everything runs on the current CUDA stream of the tensors'
 * device. The allocating, validating wrappers live in kernels_ext.py.
 *
 * Error contract: no C++ exception reaches pybind11. Launch functions return "" or an error message
 * (nothing launched); slot_count / *_workspace_size return -1 for invalid arguments; kernels_ext.py
 * raises for both. Why: on the first GPU machine (torch 2.11+cu130, built by the machine's GCC)
 * every TORCH_CHECK failure here killed the interpreter (SIGSEGV) while pybind11's own argument
 * errors, set without a C++ throw, arrived as TypeError; the same code raises cleanly with torch
 * 2.13+cpu and GCC 12. So throwing/unwinding/translating a C++ exception fails in that process
 * (a toolchain/runtime mismatch with the torch wheel; kernels_ext.diagnose_exception_path tells
 * the candidates apart). Checks are therefore plain conditionals (no TORCH_CHECK, no typed
 * data_ptr<T>(), no allocation); the catch-all in guarded() is a last resort only.
 */
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

#include "ftp_kernels.h"

namespace
{

constexpr int64_t kInt32Max = 0x7fffffff;
constexpr uintptr_t kWorkspaceAlign = 256; // ftp_kernels.h: workspace is 256-byte aligned

template <typename... Args>
std::string msg(Args const&... args)
{
    std::ostringstream s;
    s << "ftp kernels: ";
    (s << ... << args);
    return s.str();
}

std::string sizesStr(at::Tensor const& t)
{
    std::ostringstream s;
    s << t.sizes();
    return s.str();
}

bool hiddenDtype(at::ScalarType type, ftp_dtype_t* out)
{
    switch (type)
    {
    case at::kFloat: *out = FTP_DTYPE_FLOAT32; return true;
    case at::kHalf: *out = FTP_DTYPE_FLOAT16; return true;
    case at::kBFloat16: *out = FTP_DTYPE_BFLOAT16; return true;
    default: return false;
    }
}

//! "" if t is a defined, dense, contiguous CUDA tensor of `dtype` with `dim` dims on `device`.
std::string checkTensor(at::Tensor const& t, char const* name, at::ScalarType dtype, int64_t dim, at::Device device)
{
    if (!t.defined())
    {
        return msg(name, " is an undefined tensor");
    }
    if (t.is_nested() || t.layout() != at::kStrided)
    {
        return msg(name, " must be a dense (strided) tensor");
    }
    if (!t.is_cuda())
    {
        return msg(name, " must be a CUDA tensor, got one on ", t.device());
    }
    if (t.device() != device)
    {
        return msg(name, " is on ", t.device(), ", expected ", device);
    }
    if (t.scalar_type() != dtype)
    {
        return msg(name, " must be ", c10::toString(dtype), ", got ", c10::toString(t.scalar_type()));
    }
    if (t.dim() != dim)
    {
        return msg(name, " must have ", dim, " dims, got shape ", sizesStr(t));
    }
    if (!t.is_contiguous())
    {
        return msg(name, " must be contiguous");
    }
    if (!t.has_storage())
    {
        return msg(name, " has no storage");
    }
    return {};
}

std::string checkShape(at::Tensor const& t, char const* name, at::IntArrayRef expected)
{
    if (t.sizes() != expected)
    {
        std::ostringstream e;
        e << expected;
        return msg(name, " has shape ", sizesStr(t), ", expected ", e.str());
    }
    return {};
}

using Named = std::pair<at::Tensor const*, char const*>;

//! "" unless an output shares bytes with an input or another output.
std::string checkDisjoint(std::initializer_list<Named> outputs, std::initializer_list<Named> inputs)
{
    auto const overlap = [](at::Tensor const& a, at::Tensor const& b) {
        auto const bytes = [](at::Tensor const& t) { return static_cast<uintptr_t>(t.numel()) * t.element_size(); };
        if (bytes(a) == 0 || bytes(b) == 0)
        {
            return false;
        }
        auto const a0 = reinterpret_cast<uintptr_t>(a.const_data_ptr());
        auto const b0 = reinterpret_cast<uintptr_t>(b.const_data_ptr());
        return a0 < b0 + bytes(b) && b0 < a0 + bytes(a);
    };
    for (auto o = outputs.begin(); o != outputs.end(); ++o)
    {
        for (Named const& in : inputs)
        {
            if (overlap(*o->first, *in.first))
            {
                return msg(o->second, " overlaps ", in.second, " in memory; outputs must not alias the inputs");
            }
        }
        for (auto p = o + 1; p != outputs.end(); ++p)
        {
            if (overlap(*o->first, *p->first))
            {
                return msg(o->second, " overlaps ", p->second, " in memory; outputs must not alias each other");
            }
        }
    }
    return {};
}

std::string checkWorkspace(at::Tensor const& ws, size_t need, at::Device device)
{
    if (std::string e = checkTensor(ws, "workspace", at::kByte, 1, device); !e.empty())
    {
        return e;
    }
    if (static_cast<size_t>(ws.numel()) < need)
    {
        return msg("workspace has ", ws.numel(), " bytes, the launch needs ", need);
    }
    if (need > 0 && reinterpret_cast<uintptr_t>(ws.const_data_ptr()) % kWorkspaceAlign != 0)
    {
        return msg("workspace must be ", kWorkspaceAlign, "-byte aligned (use a fresh tensor, not a view)");
    }
    return {};
}

std::string launchStatus(cudaError_t err, char const* what)
{
    if (err == cudaSuccess)
    {
        return {};
    }
    return msg(what, " failed: ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
}

//! Runs body() (which returns a status string) with the last-resort catch: nothing escapes.
template <typename F>
std::string guarded(char const* what, F&& body) noexcept
{
    try
    {
        return body();
    }
    catch (c10::Error const& e)
    {
        try
        {
            return msg(what, ": ", e.what_without_backtrace());
        }
        catch (...)
        {
        }
    }
    catch (std::exception const& e)
    {
        try
        {
            return msg(what, ": ", e.what());
        }
        catch (...)
        {
        }
    }
    catch (...)
    {
    }
    return "ftp kernels: unexpected error";
}

#define FTP_RETURN_IF_ERROR(expr)                                                                                      \
    do                                                                                                                 \
    {                                                                                                                  \
        std::string ftp_status_ = (expr);                                                                              \
        if (!ftp_status_.empty())                                                                                      \
        {                                                                                                              \
            return ftp_status_;                                                                                        \
        }                                                                                                              \
    } while (0)

//! "" if t is a float32 / float16 / bfloat16 [*, *, *] tensor as checkTensor wants (its device is the call's).
std::string checkHidden(at::Tensor const& t, char const* name, ftp_dtype_t* dtype)
{
    if (!t.defined() || !hiddenDtype(t.scalar_type(), dtype))
    {
        return msg(name, " must be a float32, float16 or bfloat16 tensor");
    }
    return checkTensor(t, name, t.scalar_type(), 3, t.device());
}

//! The gathers' scores [B,T] float32 and valid [B,T] bool.
std::string checkScoresValid(at::Tensor const& scores, at::Tensor const& valid, int64_t B, int64_t T, at::Device dev)
{
    FTP_RETURN_IF_ERROR(checkTensor(scores, "scores", at::kFloat, 2, dev));
    FTP_RETURN_IF_ERROR(checkTensor(valid, "valid", at::kBool, 2, dev));
    FTP_RETURN_IF_ERROR(checkShape(scores, "scores", {B, T}));
    return checkShape(valid, "valid", {B, T});
}

int64_t slotCount(int64_t T, int64_t keepQ16) noexcept
{
    if (T < 0 || T > FTP_MAX_TOKENS || keepQ16 < 1 || keepQ16 > 65536)
    {
        return -1;
    }
    return ftp_topk_slot_count(T, static_cast<int32_t>(keepQ16));
}

//! Workspace query for a [B, T] problem, -1 for sizes the launches reject.
template <size_t (*Query)(int64_t, int64_t)>
int64_t workspaceSize(int64_t B, int64_t T) noexcept
{
    if (B < 0 || T < 0 || B > kInt32Max || T > kInt32Max || (T > 0 && B > kInt32Max / T))
    {
        return -1;
    }
    return static_cast<int64_t>(Query(B, T));
}

std::string topkGatherOut(at::Tensor const& hidden, at::Tensor const& scores, at::Tensor const& valid,
    int64_t keepQ16, at::Tensor const& gathered, at::Tensor const& indices, at::Tensor const& active,
    at::Tensor const& workspace) noexcept
{
    return guarded("topk_gather_out", [&]() -> std::string {
        ftp_dtype_t dtype{};
        FTP_RETURN_IF_ERROR(checkHidden(hidden, "hidden", &dtype));
        auto const dev = hidden.device();
        int64_t const B = hidden.size(0), T = hidden.size(1), D = hidden.size(2);
        if (keepQ16 < 1 || keepQ16 > 65536)
        {
            return msg("keep_q16 must be in 1..65536, got ", keepQ16);
        }
        if (T > FTP_MAX_TOKENS)
        {
            return msg("hidden has ", T, " tokens per row, at most ", FTP_MAX_TOKENS, " are supported");
        }
        if (B > kInt32Max)
        {
            return msg("batch ", B, " is too large");
        }
        int64_t const K = slotCount(T, keepQ16);
        FTP_RETURN_IF_ERROR(checkScoresValid(scores, valid, B, T, dev));
        FTP_RETURN_IF_ERROR(checkTensor(gathered, "gathered", hidden.scalar_type(), 3, dev));
        FTP_RETURN_IF_ERROR(checkTensor(indices, "indices", at::kLong, 2, dev));
        FTP_RETURN_IF_ERROR(checkTensor(active, "active", at::kBool, 2, dev));
        FTP_RETURN_IF_ERROR(checkShape(gathered, "gathered", {B, K, D}));
        FTP_RETURN_IF_ERROR(checkShape(indices, "indices", {B, K}));
        FTP_RETURN_IF_ERROR(checkShape(active, "active", {B, K}));
        FTP_RETURN_IF_ERROR(checkDisjoint({{&gathered, "gathered"}, {&indices, "indices"}, {&active, "active"}},
            {{&hidden, "hidden"}, {&scores, "scores"}, {&valid, "valid"}}));
        size_t const wsBytes = ftp_topk_gather_workspace_size(B, T);
        FTP_RETURN_IF_ERROR(checkWorkspace(workspace, wsBytes, dev));
        c10::cuda::CUDAGuard guard(dev);
        return launchStatus(ftp_topk_gather_launch(hidden.const_data_ptr(),
                                static_cast<float const*>(scores.const_data_ptr()),
                                static_cast<uint8_t const*>(valid.const_data_ptr()), gathered.mutable_data_ptr(),
                                static_cast<int64_t*>(indices.mutable_data_ptr()),
                                static_cast<uint8_t*>(active.mutable_data_ptr()), dtype, B, T, D,
                                static_cast<int32_t>(keepQ16), workspace.mutable_data_ptr(),
                                static_cast<size_t>(workspace.numel()), c10::cuda::getCurrentCUDAStream().stream()),
            "ftp_topk_gather_launch");
    });
}

std::string topkScatterOut(at::Tensor const& residual, at::Tensor const& rows, at::Tensor const& indices,
    at::Tensor const& active, at::Tensor const& out, at::Tensor const& workspace) noexcept
{
    return guarded("topk_scatter_out", [&]() -> std::string {
        ftp_dtype_t dtype{};
        FTP_RETURN_IF_ERROR(checkHidden(residual, "residual", &dtype));
        auto const dev = residual.device();
        int64_t const B = residual.size(0), T = residual.size(1), D = residual.size(2);
        FTP_RETURN_IF_ERROR(checkTensor(indices, "indices", at::kLong, 2, dev));
        int64_t const K = indices.size(1);
        FTP_RETURN_IF_ERROR(checkTensor(rows, "rows", residual.scalar_type(), 3, dev));
        FTP_RETURN_IF_ERROR(checkTensor(active, "active", at::kBool, 2, dev));
        FTP_RETURN_IF_ERROR(checkShape(rows, "rows", {B, K, D}));
        FTP_RETURN_IF_ERROR(checkShape(indices, "indices", {B, K}));
        FTP_RETURN_IF_ERROR(checkShape(active, "active", {B, K}));
        FTP_RETURN_IF_ERROR(checkTensor(out, "out", residual.scalar_type(), 3, dev));
        FTP_RETURN_IF_ERROR(checkShape(out, "out", {B, T, D}));
        if (K > T)
        {
            return msg("indices has ", K, " slots per row, more than the ", T, " tokens");
        }
        if (T > 0 && B > kInt32Max / T)
        {
            return msg("B*T = ", B, "*", T, " exceeds the int32 row map");
        }
        FTP_RETURN_IF_ERROR(checkDisjoint(
            {{&out, "out"}}, {{&residual, "residual"}, {&rows, "rows"}, {&indices, "indices"}, {&active, "active"}}));
        size_t const wsBytes = ftp_topk_scatter_workspace_size(B, T);
        FTP_RETURN_IF_ERROR(checkWorkspace(workspace, wsBytes, dev));
        c10::cuda::CUDAGuard guard(dev);
        return launchStatus(ftp_topk_scatter_launch(residual.const_data_ptr(), rows.const_data_ptr(),
                                static_cast<int64_t const*>(indices.const_data_ptr()),
                                static_cast<uint8_t const*>(active.const_data_ptr()), out.mutable_data_ptr(), dtype,
                                B, T, K, D, workspace.mutable_data_ptr(), static_cast<size_t>(workspace.numel()),
                                c10::cuda::getCurrentCUDAStream().stream()),
            "ftp_topk_scatter_launch");
    });
}

std::string thresholdGatherOut(at::Tensor const& hidden, at::Tensor const& scores, at::Tensor const& valid,
    double threshold, at::Tensor const& gathered, at::Tensor const& rows, at::Tensor const& count,
    at::Tensor const& workspace) noexcept
{
    return guarded("threshold_gather_out", [&]() -> std::string {
        ftp_dtype_t dtype{};
        FTP_RETURN_IF_ERROR(checkHidden(hidden, "hidden", &dtype));
        auto const dev = hidden.device();
        int64_t const B = hidden.size(0), T = hidden.size(1), D = hidden.size(2);
        if (T > 0 && B > kInt32Max / T)
        {
            return msg("B*T = ", B, "*", T, " is too large");
        }
        FTP_RETURN_IF_ERROR(checkScoresValid(scores, valid, B, T, dev));
        FTP_RETURN_IF_ERROR(checkTensor(gathered, "gathered", hidden.scalar_type(), 2, dev));
        FTP_RETURN_IF_ERROR(checkTensor(rows, "rows", at::kLong, 1, dev));
        FTP_RETURN_IF_ERROR(checkTensor(count, "count", at::kInt, 0, dev));
        FTP_RETURN_IF_ERROR(checkShape(gathered, "gathered (upper bound B*T rows)", {B * T, D}));
        FTP_RETURN_IF_ERROR(checkShape(rows, "rows (upper bound B*T)", {B * T}));
        FTP_RETURN_IF_ERROR(checkDisjoint({{&gathered, "gathered"}, {&rows, "rows"}, {&count, "count"}},
            {{&hidden, "hidden"}, {&scores, "scores"}, {&valid, "valid"}}));
        size_t const wsBytes = ftp_threshold_gather_workspace_size(B, T);
        FTP_RETURN_IF_ERROR(checkWorkspace(workspace, wsBytes, dev));
        c10::cuda::CUDAGuard guard(dev);
        return launchStatus(
            ftp_threshold_gather_launch(hidden.const_data_ptr(), static_cast<float const*>(scores.const_data_ptr()),
                static_cast<uint8_t const*>(valid.const_data_ptr()), static_cast<float>(threshold),
                gathered.mutable_data_ptr(), static_cast<int64_t*>(rows.mutable_data_ptr()),
                static_cast<int32_t*>(count.mutable_data_ptr()), dtype, B, T, D, workspace.mutable_data_ptr(), static_cast<size_t>(workspace.numel()),
                c10::cuda::getCurrentCUDAStream().stream()),
            "ftp_threshold_gather_launch");
    });
}

std::string rowScatterOut(at::Tensor const& residual, at::Tensor const& rowsData, at::Tensor const& rows,
    at::Tensor const& out, at::Tensor const& workspace) noexcept
{
    return guarded("row_scatter_out", [&]() -> std::string {
        ftp_dtype_t dtype{};
        FTP_RETURN_IF_ERROR(checkHidden(residual, "residual", &dtype));
        auto const dev = residual.device();
        int64_t const B = residual.size(0), T = residual.size(1), D = residual.size(2);
        FTP_RETURN_IF_ERROR(checkTensor(rows, "rows", at::kLong, 1, dev));
        int64_t const N = rows.size(0);
        FTP_RETURN_IF_ERROR(checkTensor(rowsData, "rows_data", residual.scalar_type(), 2, dev));
        FTP_RETURN_IF_ERROR(checkShape(rowsData, "rows_data", {N, D}));
        FTP_RETURN_IF_ERROR(checkTensor(out, "out", residual.scalar_type(), 3, dev));
        FTP_RETURN_IF_ERROR(checkShape(out, "out", {B, T, D}));
        if ((T > 0 && B > kInt32Max / T) || N > kInt32Max)
        {
            return msg("B*T = ", B, "*", T, " or N = ", N, " exceeds the int32 row map");
        }
        FTP_RETURN_IF_ERROR(
            checkDisjoint({{&out, "out"}}, {{&residual, "residual"}, {&rowsData, "rows_data"}, {&rows, "rows"}}));
        size_t const wsBytes = ftp_row_scatter_workspace_size(B, T);
        FTP_RETURN_IF_ERROR(checkWorkspace(workspace, wsBytes, dev));
        c10::cuda::CUDAGuard guard(dev);
        return launchStatus(ftp_row_scatter_launch(residual.const_data_ptr(), rowsData.const_data_ptr(),
                                static_cast<int64_t const*>(rows.const_data_ptr()), out.mutable_data_ptr(), dtype, B,
                                T, N, D, workspace.mutable_data_ptr(), static_cast<size_t>(workspace.numel()),
                                c10::cuda::getCurrentCUDAStream().stream()),
            "ftp_row_scatter_launch");
    });
}

//! The TensorRT glue's flag conversions (kBOOL plugin tensors are not supported, so the plugins'
//! flags are int32): int32 `flags` -> bool `out` (ftp_flags_from_int32, non-zero = true) or bool
//! `flags` -> int32 `out` (ftp_flags_to_int32, 0 / 1). Any shape; `out` has the shape of `flags`.
std::string flagsOut(at::Tensor const& flags, at::Tensor const& out) noexcept
{
    return guarded("flags_out", [&]() -> std::string {
        if (!flags.defined() || !out.defined())
        {
            return msg("flags and out must be defined tensors");
        }
        bool const fromInt32 = flags.scalar_type() == at::kInt;
        if (!fromInt32 && flags.scalar_type() != at::kBool)
        {
            return msg("flags must be int32 or bool, got ", c10::toString(flags.scalar_type()));
        }
        auto const dev = flags.device();
        FTP_RETURN_IF_ERROR(checkTensor(flags, "flags", flags.scalar_type(), flags.dim(), dev));
        FTP_RETURN_IF_ERROR(checkTensor(out, "out", fromInt32 ? at::kBool : at::kInt, flags.dim(), dev));
        FTP_RETURN_IF_ERROR(checkShape(out, "out", flags.sizes()));
        FTP_RETURN_IF_ERROR(checkDisjoint({{&out, "out"}}, {{&flags, "flags"}}));
        c10::cuda::CUDAGuard guard(dev);
        cudaStream_t const stream = c10::cuda::getCurrentCUDAStream().stream();
        if (fromInt32)
        {
            return launchStatus(ftp_flags_from_int32(static_cast<int32_t const*>(flags.const_data_ptr()),
                                    static_cast<uint8_t*>(out.mutable_data_ptr()), flags.numel(), stream),
                "ftp_flags_from_int32");
        }
        return launchStatus(ftp_flags_to_int32(static_cast<uint8_t const*>(flags.const_data_ptr()),
                                static_cast<int32_t*>(out.mutable_data_ptr()), flags.numel(), stream),
            "ftp_flags_to_int32");
    });
}

//! Diagnostic only (kernels_ext.diagnose_exception_path runs it in a child process): makes a C++
//! exception on purpose. "caught": TORCH_CHECK thrown and caught inside this library (returns its
//! message); "c10" / "std": a c10::Error / std::runtime_error left to pybind11 to translate.
std::string probeException(std::string const& mode)
{
    if (mode == "caught")
    {
        try
        {
            TORCH_CHECK(mode.empty(), "probe: c10::Error caught inside the extension");
        }
        catch (c10::Error const& e)
        {
            return e.what_without_backtrace();
        }
        return "probe: nothing was thrown";
    }
    if (mode == "c10")
    {
        TORCH_CHECK(false, "probe: c10::Error left to pybind11");
    }
    if (mode == "std")
    {
        throw std::runtime_error("probe: std::runtime_error left to pybind11");
    }
    return "probe: unknown mode (caught, c10 or std)";
}

} // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.doc() = "ftp-export token-routing kernels (plugins/, same code as the TensorRT plugins); launch functions "
              "return '' or an error message and never raise";
    m.def("slot_count", &slotCount, "K for padded length T, -1 for invalid arguments", py::arg("T"),
        py::arg("keep_q16"));
    m.def("topk_gather_workspace_size", &workspaceSize<ftp_topk_gather_workspace_size>,
        "workspace bytes of topk_gather_out, -1 for invalid sizes", py::arg("B"), py::arg("T"));
    m.def("topk_scatter_workspace_size", &workspaceSize<ftp_topk_scatter_workspace_size>,
        "workspace bytes of topk_scatter_out, -1 for invalid sizes", py::arg("B"), py::arg("T"));
    m.def("threshold_gather_workspace_size", &workspaceSize<ftp_threshold_gather_workspace_size>,
        "workspace bytes of threshold_gather_out, -1 for invalid sizes", py::arg("B"), py::arg("T"));
    m.def("row_scatter_workspace_size", &workspaceSize<ftp_row_scatter_workspace_size>,
        "workspace bytes of row_scatter_out, -1 for invalid sizes", py::arg("B"), py::arg("T"));
    m.def("topk_gather_out", &topkGatherOut,
        "FtpTopKGather into (gathered [B,K,D], indices [B,K], active [B,K]); returns '' or an error message",
        py::arg("hidden"), py::arg("scores"), py::arg("valid"), py::arg("keep_q16"), py::arg("gathered"),
        py::arg("indices"), py::arg("active"), py::arg("workspace"));
    m.def("topk_scatter_out", &topkScatterOut, "FtpTopKScatter into out [B,T,D]; returns '' or an error message",
        py::arg("residual"), py::arg("rows"), py::arg("indices"), py::arg("active"), py::arg("out"),
        py::arg("workspace"));
    m.def("threshold_gather_out", &thresholdGatherOut,
        "FtpThresholdGather into (gathered [B*T,D], rows [B*T], count []); first count rows are valid; returns '' "
        "or an error message",
        py::arg("hidden"), py::arg("scores"), py::arg("valid"), py::arg("threshold"), py::arg("gathered"),
        py::arg("rows"), py::arg("count"), py::arg("workspace"));
    m.def("row_scatter_out", &rowScatterOut, "FtpRowScatter into out [B,T,D]; returns '' or an error message",
        py::arg("residual"), py::arg("rows_data"), py::arg("rows"), py::arg("out"), py::arg("workspace"));
    m.def("flags_out", &flagsOut,
        "int32 flags -> bool out, or bool flags -> int32 out (the TensorRT glue's conversions); returns '' or an "
        "error message",
        py::arg("flags"), py::arg("out"));
    m.def("_probe_exception", &probeException, "diagnostic: throws on purpose (run it in a child process only)",
        py::arg("mode"));
}
