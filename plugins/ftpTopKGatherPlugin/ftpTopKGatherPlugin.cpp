/*
 * FtpTopKGather TensorRT glue (IPluginV3). See ftpTopKGatherPlugin.h and plugins/README.md.
 *
 * Inputs : 0 hidden [B,T,D] float/half/bf16, 1 scores [B,T] float, 2 valid [B,T] bool
 * Outputs: 0 gathered [B,K,D] (hidden's type), 1 indices [B,K] int64, 2 active [B,K] bool
 * Fields : keep_q16 (int, 1..65536, required), rank_mode (int, optional, default 0; not read from
 *          ONNX attributes by the parser since it is not in getFieldNames()).
 */
#include "ftpTopKGatherPlugin.h"

#include <cstring>
#include <exception>

using namespace nvinfer1;

namespace ftp
{
namespace plugin
{

FtpTopKGatherPlugin::FtpTopKGatherPlugin(int32_t keepQ16, int32_t rankMode)
    : mKeepQ16(keepQ16)
    , mRankMode(rankMode)
{
}

void FtpTopKGatherPlugin::appendFields(std::vector<PluginField>& fields)
{
    fields.emplace_back("keep_q16", &mKeepQ16, PluginFieldType::kINT32, 1);
    fields.emplace_back("rank_mode", &mRankMode, PluginFieldType::kINT32, 1);
}

int32_t FtpTopKGatherPlugin::getNbOutputs() const noexcept
{
    return 3;
}

int32_t FtpTopKGatherPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != 3 || nbOutputs != 3 || !isHiddenType(inputTypes[0]))
    {
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    outputTypes[1] = DataType::kINT64;
    outputTypes[2] = DataType::kBOOL;
    return 0;
}

int32_t FtpTopKGatherPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& eb) noexcept
{
    if (nbInputs != 3 || nbOutputs != 3 || inputs[0].nbDims != 3 || inputs[1].nbDims != 2 || inputs[2].nbDims != 2)
    {
        logError("FtpTopKGather: expects hidden [B,T,D], scores [B,T], valid [B,T]");
        return -1;
    }
    IDimensionExpr const* B = inputs[0].d[0];
    IDimensionExpr const* T = inputs[0].d[1];
    IDimensionExpr const* D = inputs[0].d[2];
    IDimensionExpr const* K = nullptr;
    if (T->isConstant())
    {
        int64_t const k = ftp_topk_slot_count(T->getConstantValue(), mKeepQ16, mRankMode);
        if (k < 0)
        {
            logError("FtpTopKGather: sequence length above FTP_MAX_TOKENS (131072)");
            return -1;
        }
        K = eb.constant(k);
    }
    else
    {
        // K = min(T, max(1, count(T))): T == 0 gives 0 through the min.
        IDimensionExpr const* count = mRankMode == FTP_RANK_FLOAT_EXACT
            ? eb.operation(DimensionOperation::kCEIL_DIV, *eb.operation(DimensionOperation::kPROD, *T, *eb.constant(mKeepQ16)),
                *eb.constant(65536))
            : eb.operation(DimensionOperation::kCEIL_DIV,
                *eb.operation(DimensionOperation::kPROD, *T, *eb.constant(2 * int64_t{mKeepQ16} - 1)), *eb.constant(131072));
        K = eb.operation(DimensionOperation::kMIN, *T, *eb.operation(DimensionOperation::kMAX, *eb.constant(1), *count));
    }
    outputs[0].nbDims = 3;
    outputs[0].d[0] = B;
    outputs[0].d[1] = K;
    outputs[0].d[2] = D;
    outputs[1].nbDims = 2;
    outputs[1].d[0] = B;
    outputs[1].d[1] = K;
    outputs[2].nbDims = 2;
    outputs[2].d[0] = B;
    outputs[2].d[1] = K;
    return 0;
}

bool FtpTopKGatherPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != 3 || nbOutputs != 3 || pos < 0 || pos >= 6 || !isLinear(inOut[pos]))
    {
        return false;
    }
    DataType const t = inOut[pos].desc.type;
    switch (pos)
    {
    case 0: return isHiddenType(t);                 // hidden
    case 1: return t == DataType::kFLOAT;           // scores
    case 2: return t == DataType::kBOOL;            // valid
    case 3: return t == inOut[0].desc.type;         // gathered
    case 4: return t == DataType::kINT64;           // indices
    default: return t == DataType::kBOOL;           // active
    }
}

size_t FtpTopKGatherPlugin::getWorkspaceSize(
    DynamicPluginTensorDesc const* inputs, int32_t /*nbInputs*/, DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    return ftp_topk_gather_workspace_size(inputs[0].max.d[0], inputs[0].max.d[1]);
}

int32_t FtpTopKGatherPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (nbInputs != 3 || nbOutputs != 3 || in[0].dims.nbDims != 3)
    {
        return -1;
    }
    int64_t const T = in[0].dims.d[1];
    if (T > FTP_MAX_TOKENS)
    {
        logError("FtpTopKGather: sequence length above FTP_MAX_TOKENS (131072)");
        return -1;
    }
    if (out[0].dims.nbDims == 3 && out[0].dims.d[1] != ftp_topk_slot_count(T, mKeepQ16, mRankMode))
    {
        logError("FtpTopKGather: output slot count does not match keep_q16");
        return -1;
    }
    return 0;
}

int32_t FtpTopKGatherPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    ftp_dtype_t dtype;
    if (!toFtpDtype(inputDesc[0].type, dtype))
    {
        logError("FtpTopKGather: unsupported hidden dtype");
        return -1;
    }
    Dims const& d = inputDesc[0].dims;
    size_t const wsSize = ftp_topk_gather_workspace_size(d.d[0], d.d[1]);
    cudaError_t const err = ftp_topk_gather_launch(inputs[0], static_cast<float const*>(inputs[1]),
        static_cast<uint8_t const*>(inputs[2]), outputs[0], static_cast<int64_t*>(outputs[1]),
        static_cast<uint8_t*>(outputs[2]), dtype, d.d[0], d.d[1], d.d[2], mKeepQ16, mRankMode, workspace, wsSize,
        stream);
    return checkLaunch(err, kNAME) ? 0 : -1;
}

FtpTopKGatherPluginCreator::FtpTopKGatherPluginCreator()
{
    addField("keep_q16", PluginFieldType::kINT32);
}

char const* FtpTopKGatherPluginCreator::getPluginName() const noexcept
{
    return FtpTopKGatherPlugin::kNAME;
}

IPluginV3* FtpTopKGatherPluginCreator::createPlugin(
    char const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        int64_t keepQ16 = -1;
        int64_t rankMode = FTP_RANK_ORDER_KEY;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            PluginField const& f = fc->fields[i];
            if (f.name == nullptr)
            {
                continue;
            }
            if (std::strcmp(f.name, "keep_q16") == 0 && !readIntField(f, keepQ16))
            {
                keepQ16 = -1;
            }
            else if (std::strcmp(f.name, "rank_mode") == 0 && !readIntField(f, rankMode))
            {
                rankMode = -1;
            }
        }
        if (keepQ16 < 1 || keepQ16 > 65536)
        {
            logError("FtpTopKGather: attribute keep_q16 (int, 1..65536) is required");
            return nullptr;
        }
        if (rankMode != FTP_RANK_ORDER_KEY && rankMode != FTP_RANK_FLOAT_EXACT)
        {
            logError("FtpTopKGather: rank_mode must be 0 or 1");
            return nullptr;
        }
        return new FtpTopKGatherPlugin(static_cast<int32_t>(keepQ16), static_cast<int32_t>(rankMode));
    }
    catch (std::exception const& e)
    {
        logError(std::string("FtpTopKGather: ") + e.what());
    }
    return nullptr;
}

} // namespace plugin
} // namespace ftp
