/*
 * FtpTopKScatter TensorRT glue (IPluginV3). See ftpTopKScatterPlugin.h and plugins/README.md.
 *
 * Inputs : 0 residual [B,T,D] float/half/bf16, 1 rows [B,K,D] (same type), 2 indices [B,K] int64,
 *          3 active [B,K] int32 (0/1)
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
    int64_t const B = d.d[0], T = d.d[1];
    int64_t const K = inputDesc[2].dims.d[1];
    if (K < 0 || K > T)
    {
        return cudaErrorInvalidValue; // the flag buffer holds B*T bytes
    }
    // int32 plugin flags -> the kernel's byte flags (kBOOL plugin tensors are not supported)
    FlagStaging const ws(workspace, workspaceSize, B, T, kFLAG_BUFFERS);
    uint8_t* active = ws.buffer(0);
    cudaError_t const err = ftp_flags_from_int32(static_cast<int32_t const*>(inputs[3]), active, B * K, stream);
    return err != cudaSuccess ? err
                              : ftp_topk_scatter_launch(inputs[0], inputs[1], static_cast<int64_t const*>(inputs[2]),
                                  active, outputs[0], dtype, B, T, K, d.d[2], ws.kernelWorkspace(),
                                  ws.kernelWorkspaceSize(), stream);
}

} // namespace plugin
} // namespace ftp
