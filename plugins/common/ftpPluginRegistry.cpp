/*
 * Entry points of libftp_plugins.so for TensorRT's dynamic plugin loading
 * (trtexec --dynamicPlugins / --setPluginsToSerialize, IPluginRegistry::loadLibrary,
 * IBuilderConfig::setPluginsToSerialize): getCreators() lists the four IPluginCreatorV3One
 * creators, setLoggerFinder() hands the library TensorRT's logger.
 */
#include "ftpPluginCommon.h"

#include "../ftpRowScatterPlugin/ftpRowScatterPlugin.h"
#include "../ftpThresholdGatherPlugin/ftpThresholdGatherPlugin.h"
#include "../ftpTopKGatherPlugin/ftpTopKGatherPlugin.h"
#include "../ftpTopKScatterPlugin/ftpTopKScatterPlugin.h"

using namespace nvinfer1;

// TensorRT's TENSORRTAPI only exports when TENSORRT_BUILD_LIB is defined; the library is built with
// hidden visibility, so export the two entry points explicitly.
#if defined(_WIN32)
#define FTP_PLUGIN_EXPORT __declspec(dllexport)
#else
#define FTP_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

extern "C" FTP_PLUGIN_EXPORT IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static ftp::plugin::FtpTopKGatherPluginCreator sTopKGather;
    static ftp::plugin::FtpTopKScatterPluginCreator sTopKScatter;
    static ftp::plugin::FtpThresholdGatherPluginCreator sThresholdGather;
    static ftp::plugin::FtpRowScatterPluginCreator sRowScatter;
    static IPluginCreatorInterface* const kCreators[] = {&sTopKGather, &sTopKScatter, &sThresholdGather, &sRowScatter};
    nbCreators = static_cast<int32_t>(sizeof(kCreators) / sizeof(kCreators[0]));
    return kCreators;
}

extern "C" FTP_PLUGIN_EXPORT void setLoggerFinder(ILoggerFinder* finder)
{
    ftp::plugin::setLoggerFinder(finder);
}
