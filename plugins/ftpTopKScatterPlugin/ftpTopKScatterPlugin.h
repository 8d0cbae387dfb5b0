/*
 * FtpTopKScatter: writes the block's output rows for the active top-K slots back over the residual.
 * Spec: plugins/README.md. Kernel: ftpTopKScatterKernel.cu (ftp_topk_scatter_launch).
 */
#ifndef FTP_TOPK_SCATTER_PLUGIN_H
#define FTP_TOPK_SCATTER_PLUGIN_H

#include "../common/ftpPluginCommon.h"

namespace ftp
{
namespace plugin
{

class FtpTopKScatterPlugin : public PluginBase<FtpTopKScatterPlugin>
{
public:
    static constexpr char const* kNAME = "FtpTopKScatter";

    FtpTopKScatterPlugin() = default;
    FtpTopKScatterPlugin(FtpTopKScatterPlugin const&) = default;

    void appendFields(std::vector<nvinfer1::PluginField>& fields);

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
        int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
};

class FtpTopKScatterPluginCreator : public CreatorBase
{
public:
    char const* getPluginName() const noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
};

} // namespace plugin
} // namespace ftp

#endif // FTP_TOPK_SCATTER_PLUGIN_H
