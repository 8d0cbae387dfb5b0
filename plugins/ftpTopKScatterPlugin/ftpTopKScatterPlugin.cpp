/*
 * FtpTopKScatter TensorRT glue (IPluginV3). See ftpTopKScatterPlugin.h and plugins/README.md.
 *
 * Inputs : 0 residual [B,T,D] float/half/bf16, 1 rows [B,K,D] (same type), 2 indices [B,K] int64,
 *          3 active [B,K] bool
 * Outputs: 0 out [B,T,D] (residual's type)
 * Fields : none
 */
#include "ftpTopKScatterPlugin.h"

using namespace nvinfer1;

namespace ftp
{
namespace plugin
{

cudaError_t FtpTopKScatterPlugin::launch(PluginTensorDesc const* inputDesc, void const* const* inputs,
    void* const* outputs, ftp_dtype_t dtype, void* workspace, size_t workspaceSize, cudaStream_t stream) const
{
    Dims const& d = inputDesc[0].dims;
    int64_t const K = inputDesc[2].dims.d[1];
    return ftp_topk_scatter_launch(inputs[0], inputs[1], static_cast<int64_t const*>(inputs[2]),
        static_cast<uint8_t const*>(inputs[3]), outputs[0], dtype, d.d[0], d.d[1], K, d.d[2], workspace, workspaceSize,
        stream);
}

} // namespace plugin
} // namespace ftp
