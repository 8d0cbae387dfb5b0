/*
 * TensorRT glue helpers shared by the ftp plugins (see ftpPluginCommon.h).
 */
#include "ftpPluginCommon.h"

#include <cstring>
#include <mutex>

namespace ftp
{
namespace plugin
{
namespace
{

std::mutex gLoggerMutex;
nvinfer1::ILoggerFinder* gLoggerFinder{nullptr};

} // namespace

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    std::lock_guard<std::mutex> lock(gLoggerMutex);
    if (gLoggerFinder == nullptr && finder != nullptr)
    {
        gLoggerFinder = finder;
    }
}

void log(nvinfer1::ILogger::Severity severity, std::string const& msg) noexcept
{
    try
    {
        nvinfer1::ILogger* logger{nullptr};
        {
            std::lock_guard<std::mutex> lock(gLoggerMutex);
            if (gLoggerFinder != nullptr)
            {
                logger = gLoggerFinder->findLogger();
            }
        }
        if (logger != nullptr)
        {
            logger->log(severity, ("[ftp_plugins] " + msg).c_str());
        }
    }
    catch (...)
    {
    }
}

namespace
{

//! Reads one T from f.data into out (memcpy: the field data need not be aligned).
template <typename T, typename Out>
bool readAs(nvinfer1::PluginField const& f, Out& out) noexcept
{
    T v;
    std::memcpy(&v, f.data, sizeof(v));
    out = static_cast<Out>(v);
    return true;
}

} // namespace

bool readIntField(nvinfer1::PluginField const& f, int64_t& out) noexcept
{
    if (f.data == nullptr || f.length < 1)
    {
        return false;
    }
    switch (f.type)
    {
    case nvinfer1::PluginFieldType::kINT32: return readAs<int32_t>(f, out);
    case nvinfer1::PluginFieldType::kINT64: return readAs<int64_t>(f, out);
    case nvinfer1::PluginFieldType::kINT16: return readAs<int16_t>(f, out);
    case nvinfer1::PluginFieldType::kINT8: return readAs<int8_t>(f, out);
    default: return false;
    }
}

bool readFloatField(nvinfer1::PluginField const& f, float& out) noexcept
{
    if (f.data == nullptr || f.length < 1)
    {
        return false;
    }
    switch (f.type)
    {
    case nvinfer1::PluginFieldType::kFLOAT32: return readAs<float>(f, out);
    case nvinfer1::PluginFieldType::kFLOAT64: return readAs<double>(f, out);
    default: return false;
    }
}

nvinfer1::PluginField const* findField(nvinfer1::PluginFieldCollection const* fc, char const* name) noexcept
{
    nvinfer1::PluginField const* found = nullptr;
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        if (fc->fields[i].name != nullptr && std::strcmp(fc->fields[i].name, name) == 0)
        {
            found = &fc->fields[i];
        }
    }
    return found;
}

bool checkLaunch(cudaError_t err, char const* plugin) noexcept
{
    if (err == cudaSuccess)
    {
        return true;
    }
    logError(std::string(plugin) + ": kernel launch failed: " + cudaGetErrorString(err));
    return false;
}

} // namespace plugin
} // namespace ftp
