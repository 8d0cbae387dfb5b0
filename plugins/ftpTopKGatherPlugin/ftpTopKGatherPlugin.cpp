/*
 * FtpTopKGather TensorRT glue (IPluginV3). See ftpTopKGatherPlugin.h and plugins/README.md.
 *
 * Inputs : 0 hidden [B,T,D] float/half/bf16, 1 scores [B,T] float, 2 valid [B,T] int32 (0/1)
 * Outputs: 0 gathered [B,K,D] (hidden's type), 1 indices [B,K] int64, 2 active [B,K] int32 (0/1)
 * Fields : keep_q16 (int, 1..65536, required)
 */
#include "ftpTopKGatherPlugin.h"

using namespace nvinfer1;

namespace ftp
{
namespace plugin
{

FtpTopKGatherPlugin::FtpTopKGatherPlugin(int32_t keepQ16)
    : mKeepQ16(keepQ16)
{
}

IPluginV3* FtpTopKGatherPlugin::create(PluginFieldCollection const* fc)
{
    int64_t keepQ16 = -1;
    PluginField const* f = findField(fc, "keep_q16");
    if (f == nullptr || !readIntField(*f, keepQ16) || keepQ16 < 1 || keepQ16 > 65536)
    {
        logError("FtpTopKGather: attribute keep_q16 (int, 1..65536) is required");
        return nullptr;
    }
    return new FtpTopKGatherPlugin(static_cast<int32_t>(keepQ16));
}

void FtpTopKGatherPlugin::appendFieldNames(std::vector<PluginField>& fields)
{
    fields.emplace_back("keep_q16", nullptr, PluginFieldType::kINT32, 1);
}

void FtpTopKGatherPlugin::appendFields(std::vector<PluginField>& fields)
{
    fields.emplace_back("keep_q16", &mKeepQ16, PluginFieldType::kINT32, 1);
}

int32_t FtpTopKGatherPlugin::outputShapes(DimsExprs const* inputs, DimsExprs* outputs, IExprBuilder& eb) noexcept
{
    IDimensionExpr const* B = inputs[0].d[0];
    IDimensionExpr const* T = inputs[0].d[1];
    IDimensionExpr const* D = inputs[0].d[2];
    IDimensionExpr const* K = nullptr;
    if (T->isConstant())
    {
        int64_t const k = ftp_topk_slot_count(T->getConstantValue(), mKeepQ16);
        if (k < 0)
        {
            logError("FtpTopKGather: sequence length above FTP_MAX_TOKENS (131072)");
            return -1;
        }
        K = eb.constant(k);
    }
    else
    {
        // K = min(T, max(1, count(T))), count(T) = ceil(T * (2*keep_q16 - 1) / 131072); T == 0 gives 0.
        IDimensionExpr const* count = eb.operation(DimensionOperation::kCEIL_DIV,
            *eb.operation(DimensionOperation::kPROD, *T, *eb.constant(2 * int64_t{mKeepQ16} - 1)), *eb.constant(131072));
        K = eb.operation(DimensionOperation::kMIN, *T, *eb.operation(DimensionOperation::kMAX, *eb.constant(1), *count));
    }
    outputs[0].nbDims = 3;
    outputs[0].d[0] = B;
    outputs[0].d[1] = K;
    outputs[0].d[2] = D;
    for (int32_t i = 1; i < 3; ++i) // indices, active: [B, K]
    {
        outputs[i].nbDims = 2;
        outputs[i].d[0] = B;
        outputs[i].d[1] = K;
    }
    return 0;
}

int32_t FtpTopKGatherPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (!hasIoCounts(nbInputs, nbOutputs) || in[0].dims.nbDims != 3)
    {
        return -1;
    }
    int64_t const T = in[0].dims.d[1];
    if (T > FTP_MAX_TOKENS)
    {
        logError("FtpTopKGather: sequence length above FTP_MAX_TOKENS (131072)");
        return -1;
    }
    if (out[0].dims.nbDims == 3 && out[0].dims.d[1] != ftp_topk_slot_count(T, mKeepQ16))
    {
        logError("FtpTopKGather: output slot count does not match keep_q16");
        return -1;
    }
    return 0;
}

cudaError_t FtpTopKGatherPlugin::launch(PluginTensorDesc const* inputDesc, void const* const* inputs,
    void* const* outputs, ftp_dtype_t dtype, void* workspace, size_t workspaceSize, cudaStream_t stream) const
{
    Dims const& d = inputDesc[0].dims;
    int64_t const B = d.d[0], T = d.d[1];
    int64_t const K = ftp_topk_slot_count(T, mKeepQ16);
    if (K < 0)
    {
        return cudaErrorInvalidValue;
    }
    // int32 plugin flags <-> the kernel's byte flags (kBOOL plugin tensors are not supported)
    FlagStaging const ws(workspace, workspaceSize, B, T, kFLAG_BUFFERS);
    uint8_t* valid = ws.buffer(0);
    uint8_t* active = ws.buffer(1);
    cudaError_t err = ftp_flags_from_int32(static_cast<int32_t const*>(inputs[2]), valid, B * T, stream);
    if (err == cudaSuccess)
    {
        err = ftp_topk_gather_launch(inputs[0], static_cast<float const*>(inputs[1]), valid, outputs[0],
            static_cast<int64_t*>(outputs[1]), active, dtype, B, T, d.d[2], mKeepQ16, ws.kernelWorkspace(),
            ws.kernelWorkspaceSize(), stream);
    }
    return err == cudaSuccess ? ftp_flags_to_int32(active, static_cast<int32_t*>(outputs[2]), B * K, stream) : err;
}

} // namespace plugin
} // namespace ftp
