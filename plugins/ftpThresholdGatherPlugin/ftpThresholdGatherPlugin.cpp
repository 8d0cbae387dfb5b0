/*
 * FtpThresholdGather TensorRT glue (IPluginV3). See ftpThresholdGatherPlugin.h and plugins/README.md.
 *
 * Inputs : 0 hidden [B,T,D] float/half/bf16, 1 scores [B,T] float, 2 valid [B,T] bool
 * Outputs: 0 gathered [N,D] (hidden's type), 1 rows [N] int64, 2 count [] int64 = N (size tensor,
 *          declared with IExprBuilder::declareSizeTensor(2, opt = B*T, upper = B*T))
 * Fields : threshold (float, required)
 */
#include "ftpThresholdGatherPlugin.h"

#include <cmath>
#include <cstring>
#include <exception>

using namespace nvinfer1;

namespace ftp
{
namespace plugin
{

FtpThresholdGatherPlugin::FtpThresholdGatherPlugin(float threshold)
    : mThreshold(threshold)
{
}

void FtpThresholdGatherPlugin::appendFields(std::vector<PluginField>& fields)
{
    fields.emplace_back("threshold", &mThreshold, PluginFieldType::kFLOAT32, 1);
}

int32_t FtpThresholdGatherPlugin::getNbOutputs() const noexcept
{
    return 3;
}

int32_t FtpThresholdGatherPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != 3 || nbOutputs != 3 || !isHiddenType(inputTypes[0]))
    {
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    outputTypes[1] = DataType::kINT64;
    outputTypes[2] = DataType::kINT64; // size tensor
    return 0;
}

int32_t FtpThresholdGatherPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& eb) noexcept
{
    if (nbInputs != 3 || nbOutputs != 3 || inputs[0].nbDims != 3 || inputs[1].nbDims != 2 || inputs[2].nbDims != 2)
    {
        logError("FtpThresholdGather: expects hidden [B,T,D], scores [B,T], valid [B,T]");
        return -1;
    }
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

bool FtpThresholdGatherPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != 3 || nbOutputs != 3 || pos < 0 || pos >= 6 || !isLinear(inOut[pos]))
    {
        return false;
    }
    DataType const t = inOut[pos].desc.type;
    switch (pos)
    {
    case 0: return isHiddenType(t);         // hidden
    case 1: return t == DataType::kFLOAT;   // scores
    case 2: return t == DataType::kBOOL;    // valid
    case 3: return t == inOut[0].desc.type; // gathered
    case 4: return t == DataType::kINT64;   // rows
    default: return t == DataType::kINT64;  // count (size tensor)
    }
}

size_t FtpThresholdGatherPlugin::getWorkspaceSize(
    DynamicPluginTensorDesc const* inputs, int32_t /*nbInputs*/, DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    return ftp_threshold_gather_workspace_size(inputs[0].max.d[0], inputs[0].max.d[1]);
}

int32_t FtpThresholdGatherPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    ftp_dtype_t dtype;
    if (!toFtpDtype(inputDesc[0].type, dtype))
    {
        logError("FtpThresholdGather: unsupported hidden dtype");
        return -1;
    }
    Dims const& d = inputDesc[0].dims;
    size_t const wsSize = ftp_threshold_gather_workspace_size(d.d[0], d.d[1]);
    // outputs 0/1 are allocated by TensorRT for the upper bound B*T rows; N is written to output 2
    cudaError_t const err = ftp_threshold_gather_launch(inputs[0], static_cast<float const*>(inputs[1]),
        static_cast<uint8_t const*>(inputs[2]), mThreshold, outputs[0], static_cast<int64_t*>(outputs[1]),
        static_cast<int64_t*>(outputs[2]), dtype, d.d[0], d.d[1], d.d[2], workspace, wsSize, stream);
    return checkLaunch(err, kNAME) ? 0 : -1;
}

FtpThresholdGatherPluginCreator::FtpThresholdGatherPluginCreator()
{
    addField("threshold", PluginFieldType::kFLOAT32);
}

char const* FtpThresholdGatherPluginCreator::getPluginName() const noexcept
{
    return FtpThresholdGatherPlugin::kNAME;
}

IPluginV3* FtpThresholdGatherPluginCreator::createPlugin(
    char const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        bool found = false;
        float threshold = 0.0f;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            PluginField const& f = fc->fields[i];
            if (f.name != nullptr && std::strcmp(f.name, "threshold") == 0)
            {
                found = readFloatField(f, threshold);
            }
        }
        if (!found || std::isnan(threshold))
        {
            logError("FtpThresholdGather: attribute threshold (float) is required");
            return nullptr;
        }
        return new FtpThresholdGatherPlugin(threshold);
    }
    catch (std::exception const& e)
    {
        logError(std::string("FtpThresholdGather: ") + e.what());
    }
    return nullptr;
}

} // namespace plugin
} // namespace ftp
