/*
 * FtpTopKGather (prefill): per-row top-K of the router scores, gathered rows in ascending token order.
 * Spec: plugins/README.md. Kernel: ftpTopKGatherKernel.cu (ftp_topk_gather_launch).
 */
#ifndef FTP_TOPK_GATHER_PLUGIN_H
#define FTP_TOPK_GATHER_PLUGIN_H

#include "../common/ftpPluginCommon.h"

namespace ftp
{
namespace plugin
{

class FtpTopKGatherPlugin : public PluginBase<FtpTopKGatherPlugin>
{
public:
    static constexpr char const* kNAME = "FtpTopKGather";
    static constexpr int32_t kNB_INPUTS = 3;
    static constexpr int32_t kNB_OUTPUTS = 3;
    //! hidden, scores, valid -> gathered, indices, active (valid, active: int32 0/1, see IoType)
    static constexpr IoType kIO[] = {IoType::kHIDDEN, IoType::kFLOAT, IoType::kINT32, IoType::kHIDDEN, IoType::kINT64,
        IoType::kINT32};
    static constexpr int32_t kINPUT_RANKS[] = {3, 2, 2};
    static constexpr char const* kEXPECTS = "hidden [B,T,D], scores [B,T], valid [B,T]";
    //! byte flags of valid [B,T] and active [B,K], then the kernel's workspace
    static constexpr int32_t kFLAG_BUFFERS = 2;
    static constexpr size_t (*kWORKSPACE_SIZE)(int64_t, int64_t)
        = &stagedWorkspaceSize<&ftp_topk_gather_workspace_size, kFLAG_BUFFERS>;

    explicit FtpTopKGatherPlugin(int32_t keepQ16);

    FTP_PLUGIN_FIELD_HOOKS

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;

private:
    int32_t mKeepQ16;
};

using FtpTopKGatherPluginCreator = PluginCreator<FtpTopKGatherPlugin>;

} // namespace plugin
} // namespace ftp

#endif // FTP_TOPK_GATHER_PLUGIN_H
