/*
 * FtpRowScatter TensorRT glue (IPluginV3). See ftpRowScatterPlugin.h and plugins/README.md.
 *
 * Inputs : 0 residual [B,T,D] float/half/bf16, 1 rows_data [N,D] (same type; N may be the
 *          data-dependent count of FtpThresholdGather), 2 rows [N] int64 (flat b*T+t)
 * Outputs: 0 out [B,T,D] (residual's type)
 * Fields : none
 */
#include "ftpRowScatterPlugin.h"

#include <exception>

using namespace nvinfer1;

namespace ftp
{
namespace plugin
{

void FtpRowScatterPlugin::appendFields(std::vector<PluginField>& /*fields*/) {}

int32_t FtpRowScatterPlugin::getNbOutputs() const noexcept
{
    return 1;
}

int32_t FtpRowScatterPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != 3 || nbOutputs != 1 || !isHiddenType(inputTypes[0]))
    {
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t FtpRowScatterPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& /*exprBuilder*/) noexcept
{
    if (nbInputs != 3 || nbOutputs != 1 || inputs[0].nbDims != 3 || inputs[1].nbDims != 2 || inputs[2].nbDims != 1)
    {
        logError("FtpRowScatter: expects residual [B,T,D], rows_data [N,D], rows [N]");
        return -1;
    }
    outputs[0] = inputs[0];
    return 0;
}

bool FtpRowScatterPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != 3 || nbOutputs != 1 || pos < 0 || pos >= 4 || !isLinear(inOut[pos]))
    {
        return false;
    }
    DataType const t = inOut[pos].desc.type;
    switch (pos)
    {
    case 0: return isHiddenType(t);          // residual
    case 1: return t == inOut[0].desc.type;  // rows_data
    case 2: return t == DataType::kINT64;    // rows
    default: return t == inOut[0].desc.type; // out
    }
}

size_t FtpRowScatterPlugin::getWorkspaceSize(
    DynamicPluginTensorDesc const* inputs, int32_t /*nbInputs*/, DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    return ftp_row_scatter_workspace_size(inputs[0].max.d[0], inputs[0].max.d[1]);
}

int32_t FtpRowScatterPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    ftp_dtype_t dtype;
    if (!toFtpDtype(inputDesc[0].type, dtype))
    {
        logError("FtpRowScatter: unsupported hidden dtype");
        return -1;
    }
    Dims const& d = inputDesc[0].dims;
    int64_t const N = inputDesc[2].dims.d[0];
    size_t const wsSize = ftp_row_scatter_workspace_size(d.d[0], d.d[1]);
    cudaError_t const err = ftp_row_scatter_launch(inputs[0], inputs[1], static_cast<int64_t const*>(inputs[2]),
        outputs[0], dtype, d.d[0], d.d[1], N, d.d[2], workspace, wsSize, stream);
    return checkLaunch(err, kNAME) ? 0 : -1;
}

char const* FtpRowScatterPluginCreator::getPluginName() const noexcept
{
    return FtpRowScatterPlugin::kNAME;
}

IPluginV3* FtpRowScatterPluginCreator::createPlugin(
    char const* /*name*/, PluginFieldCollection const* /*fc*/, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        return new FtpRowScatterPlugin();
    }
    catch (std::exception const& e)
    {
        logError(std::string("FtpRowScatter: ") + e.what());
    }
    return nullptr;
}

} // namespace plugin
} // namespace ftp
