/*
 * FtpThresholdGather (decode): keeps the tokens whose router score reaches a calibrated threshold;
 * the number of kept rows is data dependent (declared with IExprBuilder::declareSizeTensor).
 * Spec: plugins/README.md. Kernel: ftpThresholdGatherKernel.cu (ftp_threshold_gather_launch).
 */
#ifndef FTP_THRESHOLD_GATHER_PLUGIN_H
#define FTP_THRESHOLD_GATHER_PLUGIN_H

#include "../common/ftpPluginCommon.h"

namespace ftp
{
namespace plugin
{

class FtpThresholdGatherPlugin : public PluginBase<FtpThresholdGatherPlugin>
{
public:
    static constexpr char const* kNAME = "FtpThresholdGather";
    static constexpr int32_t kNB_INPUTS = 3;
    static constexpr int32_t kNB_OUTPUTS = 3;
    //! hidden, scores, valid -> gathered, rows, count (valid: int32 0/1, see IoType; count is the size
    //! tensor: TensorRT requires kINT32; N <= B*T < 2^31)
    static constexpr IoType kIO[] = {IoType::kHIDDEN, IoType::kFLOAT, IoType::kINT32, IoType::kHIDDEN, IoType::kINT64,
        IoType::kINT32};
    static constexpr int32_t kINPUT_RANKS[] = {3, 2, 2};
    static constexpr char const* kEXPECTS = "hidden [B,T,D], scores [B,T], valid [B,T]";
    //! byte flags of valid [B,T], then the kernel's workspace
    static constexpr int32_t kFLAG_BUFFERS = 1;
    static constexpr size_t (*kWORKSPACE_SIZE)(int64_t, int64_t)
        = &stagedWorkspaceSize<&ftp_threshold_gather_workspace_size, kFLAG_BUFFERS>;

    explicit FtpThresholdGatherPlugin(float threshold);

    FTP_PLUGIN_FIELD_HOOKS

private:
    float mThreshold;
};

using FtpThresholdGatherPluginCreator = PluginCreator<FtpThresholdGatherPlugin>;

} // namespace plugin
} // namespace ftp

#endif // FTP_THRESHOLD_GATHER_PLUGIN_H
