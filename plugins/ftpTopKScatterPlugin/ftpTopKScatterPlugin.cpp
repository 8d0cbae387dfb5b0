/*
 * FtpTopKScatter TensorRT glue (IPluginV3). See ftpTopKScatterPlugin.h and plugins/README.md.
 *
 * Inputs : 0 residual [B,T,D] float/half/bf16, 1 rows [B,K,D] (same type), 2 indices [B,K] int64,
 *          3 active [B,K] bool
 * Outputs: 0 out [B,T,D] (residual's type)
 * Fields : none
 */
#include "ftpTopKScatterPlugin.h"

#include <exception>

using namespace nvinfer1;

namespace ftp
{
namespace plugin
{

void FtpTopKScatterPlugin::appendFields(std::vector<PluginField>& /*fields*/) {}

int32_t FtpTopKScatterPlugin::getNbOutputs() const noexcept
{
    return 1;
}

int32_t FtpTopKScatterPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != 4 || nbOutputs != 1 || !isHiddenType(inputTypes[0]))
    {
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t FtpTopKScatterPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& /*exprBuilder*/) noexcept
{
    if (nbInputs != 4 || nbOutputs != 1 || inputs[0].nbDims != 3 || inputs[1].nbDims != 3 || inputs[2].nbDims != 2
        || inputs[3].nbDims != 2)
    {
        logError("FtpTopKScatter: expects residual [B,T,D], rows [B,K,D], indices [B,K], active [B,K]");
        return -1;
    }
    outputs[0] = inputs[0];
    return 0;
}

bool FtpTopKScatterPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != 4 || nbOutputs != 1 || pos < 0 || pos >= 5 || !isLinear(inOut[pos]))
    {
        return false;
    }
    DataType const t = inOut[pos].desc.type;
    switch (pos)
    {
    case 0: return isHiddenType(t);          // residual
    case 1: return t == inOut[0].desc.type;  // rows
    case 2: return t == DataType::kINT64;    // indices
    case 3: return t == DataType::kBOOL;     // active
    default: return t == inOut[0].desc.type; // out
    }
}

size_t FtpTopKScatterPlugin::getWorkspaceSize(
    DynamicPluginTensorDesc const* inputs, int32_t /*nbInputs*/, DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    return ftp_topk_scatter_workspace_size(inputs[0].max.d[0], inputs[0].max.d[1]);
}

int32_t FtpTopKScatterPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    ftp_dtype_t dtype;
    if (!toFtpDtype(inputDesc[0].type, dtype))
    {
        logError("FtpTopKScatter: unsupported hidden dtype");
        return -1;
    }
    Dims const& d = inputDesc[0].dims;
    int64_t const K = inputDesc[2].dims.d[1];
    size_t const wsSize = ftp_topk_scatter_workspace_size(d.d[0], d.d[1]);
    cudaError_t const err = ftp_topk_scatter_launch(inputs[0], inputs[1], static_cast<int64_t const*>(inputs[2]),
        static_cast<uint8_t const*>(inputs[3]), outputs[0], dtype, d.d[0], d.d[1], K, d.d[2], workspace, wsSize, stream);
    return checkLaunch(err, kNAME) ? 0 : -1;
}

char const* FtpTopKScatterPluginCreator::getPluginName() const noexcept
{
    return FtpTopKScatterPlugin::kNAME;
}

IPluginV3* FtpTopKScatterPluginCreator::createPlugin(
    char const* /*name*/, PluginFieldCollection const* /*fc*/, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        return new FtpTopKScatterPlugin();
    }
    catch (std::exception const& e)
    {
        logError(std::string("FtpTopKScatter: ") + e.what());
    }
    return nullptr;
}

} // namespace plugin
} // namespace ftp
