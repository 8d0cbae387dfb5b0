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

//! No fields; out [B,T,D] has residual's shape (PluginBase's default outputShapes).
class FtpTopKScatterPlugin : public PluginBase<FtpTopKScatterPlugin>
{
public:
    static constexpr char const* kNAME = "FtpTopKScatter";
    static constexpr int32_t kNB_INPUTS = 4;
    static constexpr int32_t kNB_OUTPUTS = 1;
    //! residual, rows, indices, active -> out (active: int32 0/1, see IoType)
    static constexpr IoType kIO[] = {IoType::kHIDDEN, IoType::kHIDDEN, IoType::kINT64, IoType::kINT32, IoType::kHIDDEN};
    static constexpr int32_t kINPUT_RANKS[] = {3, 3, 2, 2};
    static constexpr char const* kEXPECTS = "residual [B,T,D], rows [B,K,D], indices [B,K], active [B,K]";
    //! byte flags of active [B,K], then the kernel's workspace
    static constexpr int32_t kFLAG_BUFFERS = 1;
    static constexpr size_t (*kWORKSPACE_SIZE)(int64_t, int64_t)
        = &stagedWorkspaceSize<&ftp_topk_scatter_workspace_size, kFLAG_BUFFERS>;

    FTP_PLUGIN_LAUNCH_HOOK
};

using FtpTopKScatterPluginCreator = PluginCreator<FtpTopKScatterPlugin>;

} // namespace plugin
} // namespace ftp

#endif // FTP_TOPK_SCATTER_PLUGIN_H
