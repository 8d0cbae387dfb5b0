/*
 * FtpThresholdGather TensorRT glue (IPluginV3). See ftpThresholdGatherPlugin.h and plugins/README.md.
 *
 * Inputs : 0 hidden [B,T,D] float/half/bf16, 1 scores [B,T] float, 2 valid [B,T] int32 (0/1)
 * Outputs: 0 gathered [N,D] (hidden's type), 1 rows [N] int64, 2 count [] int32 = N (size tensor, kINT32 as TensorRT requires;
 *          declared with IExprBuilder::declareSizeTensor(2, opt = B*T, upper = B*T))
 * Fields : threshold (float, required)
 */
#include "ftpThresholdGatherPlugin.h"

#include <cmath>

using namespace nvinfer1;

namespace ftp
{
namespace plugin
{

FtpThresholdGatherPlugin::FtpThresholdGatherPlugin(float threshold)
    : mThreshold(threshold)
{
}

IPluginV3* FtpThresholdGatherPlugin::create(PluginFieldCollection const* fc)
{
    float threshold = 0.0f;
    PluginField const* f = findField(fc, "threshold");
    if (f == nullptr || !readFloatField(*f, threshold) || std::isnan(threshold))
    {
        logError("FtpThresholdGather: attribute threshold (float) is required");
        return nullptr;
    }
    return new FtpThresholdGatherPlugin(threshold);
}

void FtpThresholdGatherPlugin::appendFieldNames(std::vector<PluginField>& fields)
{
    fields.emplace_back("threshold", nullptr, PluginFieldType::kFLOAT32, 1);
}

void FtpThresholdGatherPlugin::appendFields(std::vector<PluginField>& fields)
{
    fields.emplace_back("threshold", &mThreshold, PluginFieldType::kFLOAT32, 1);
}

int32_t FtpThresholdGatherPlugin::outputShapes(DimsExprs const* inputs, DimsExprs* outputs, IExprBuilder& eb) noexcept
{
    // At most every token is kept; TensorRT sizes the outputs for `upper`. `opt` only steers tactic
    // timing: decode keeps most tokens at typical keep ratios, so time at the upper bound too.
    IDimensionExpr const* upper = eb.operation(DimensionOperation::kPROD, *inputs[0].d[0], *inputs[0].d[1]);
    IDimensionExpr const* n = eb.declareSizeTensor(2, *upper, *upper);
    if (n == nullptr)
    {
        return -1;
    }
    outputs[0].nbDims = 2;
    outputs[0].d[0] = n;
    outputs[0].d[1] = inputs[0].d[2];
    outputs[1].nbDims = 1;
    outputs[1].d[0] = n;
    outputs[2].nbDims = 0; // size tensors are 0-d
    return 0;
}

cudaError_t FtpThresholdGatherPlugin::launch(PluginTensorDesc const* inputDesc, void const* const* inputs,
    void* const* outputs, ftp_dtype_t dtype, void* workspace, size_t workspaceSize, cudaStream_t stream) const
{
    Dims const& d = inputDesc[0].dims;
    int64_t const B = d.d[0], T = d.d[1];
    // int32 plugin flags -> the kernel's byte flags (kBOOL plugin tensors are not supported)
    FlagStaging const ws(workspace, workspaceSize, B, T, kFLAG_BUFFERS);
    uint8_t* valid = ws.buffer(0);
    cudaError_t const err = ftp_flags_from_int32(static_cast<int32_t const*>(inputs[2]), valid, B * T, stream);
    // outputs 0/1 are allocated by TensorRT for the upper bound B*T rows; N is written to output 2
    return err != cudaSuccess ? err
                              : ftp_threshold_gather_launch(inputs[0], static_cast<float const*>(inputs[1]), valid,
                                  mThreshold, outputs[0], static_cast<int64_t*>(outputs[1]),
                                  static_cast<int32_t*>(outputs[2]), dtype, B, T, d.d[2], ws.kernelWorkspace(),
                                  ws.kernelWorkspaceSize(), stream);
}

} // namespace plugin
} // namespace ftp
