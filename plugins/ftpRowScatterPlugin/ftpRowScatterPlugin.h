/*
 * FtpRowScatter (decode): writes N computed rows back over the residual at flat row indices.
 * Spec: plugins/README.md. Kernel: ftpRowScatterKernel.cu (ftp_row_scatter_launch).
 */
#ifndef FTP_ROW_SCATTER_PLUGIN_H
#define FTP_ROW_SCATTER_PLUGIN_H

#include "../common/ftpPluginCommon.h"

namespace ftp
{
namespace plugin
{

//! No fields; out [B,T,D] has residual's shape (PluginBase's default outputShapes).
class FtpRowScatterPlugin : public PluginBase<FtpRowScatterPlugin>
{
public:
    static constexpr char const* kNAME = "FtpRowScatter";
    static constexpr int32_t kNB_INPUTS = 3;
    static constexpr int32_t kNB_OUTPUTS = 1;
    //! residual, rows_data, rows -> out
    static constexpr IoType kIO[] = {IoType::kHIDDEN, IoType::kHIDDEN, IoType::kINT64, IoType::kHIDDEN};
    static constexpr int32_t kINPUT_RANKS[] = {3, 2, 1};
    static constexpr char const* kEXPECTS = "residual [B,T,D], rows_data [N,D], rows [N]";
    static constexpr size_t (*kWORKSPACE_SIZE)(int64_t, int64_t) = &ftp_row_scatter_workspace_size;

    FTP_PLUGIN_LAUNCH_HOOK
};

using FtpRowScatterPluginCreator = PluginCreator<FtpRowScatterPlugin>;

} // namespace plugin
} // namespace ftp

#endif // FTP_ROW_SCATTER_PLUGIN_H
