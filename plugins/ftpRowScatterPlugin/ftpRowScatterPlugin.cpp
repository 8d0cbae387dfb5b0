/*
 * FtpRowScatter TensorRT glue (IPluginV3). See ftpRowScatterPlugin.h and plugins/README.md.
 *
 * Inputs : 0 residual [B,T,D] float/half/bf16, 1 rows_data [N,D] (same type; N may be the
 *          data-dependent count of FtpThresholdGather), 2 rows [N] int64 (flat b*T+t)
 * Outputs: 0 out [B,T,D] (residual's type)
 * Fields : none
 */
#include "ftpRowScatterPlugin.h"

using namespace nvinfer1;

namespace ftp
{
namespace plugin
{

cudaError_t FtpRowScatterPlugin::launch(PluginTensorDesc const* inputDesc, void const* const* inputs,
    void* const* outputs, ftp_dtype_t dtype, void* workspace, size_t workspaceSize, cudaStream_t stream) const
{
    Dims const& d = inputDesc[0].dims;
    int64_t const N = inputDesc[2].dims.d[0];
    return ftp_row_scatter_launch(inputs[0], inputs[1], static_cast<int64_t const*>(inputs[2]), outputs[0], dtype,
        d.d[0], d.d[1], N, d.d[2], workspace, workspaceSize, stream);
}

} // namespace plugin
} // namespace ftp
