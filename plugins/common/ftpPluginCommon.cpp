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

bool readIntField(nvinfer1::PluginField const& f, int64_t& out) noexcept
{
    if (f.data == nullptr || f.length < 1)
    {
        return false;
    }
    switch (f.type)
    {
    case nvinfer1::PluginFieldType::kINT32:
    {
        int32_t v;
        std::memcpy(&v, f.data, sizeof(v));
        out = v;
        return true;
    }
    case nvinfer1::PluginFieldType::kINT64:
    {
        int64_t v;
        std::memcpy(&v, f.data, sizeof(v));
        out = v;
        return true;
    }
    case nvinfer1::PluginFieldType::kINT16:
    {
        int16_t v;
        std::memcpy(&v, f.data, sizeof(v));
        out = v;
        return true;
    }
    case nvinfer1::PluginFieldType::kINT8:
    {
        int8_t v;
        std::memcpy(&v, f.data, sizeof(v));
        out = v;
        return true;
    }
    default: return false;
    }
}

bool readFloatField(nvinfer1::PluginField const& f, float& out) noexcept
{
    if (f.data == nullptr || f.length < 1)
    {
        return false;
    }
    if (f.type == nvinfer1::PluginFieldType::kFLOAT32)
    {
        std::memcpy(&out, f.data, sizeof(out));
        return true;
    }
    if (f.type == nvinfer1::PluginFieldType::kFLOAT64)
    {
        double v;
        std::memcpy(&v, f.data, sizeof(v));
        out = static_cast<float>(v);
        return true;
    }
    return false;
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
