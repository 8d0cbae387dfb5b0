/*
 * TensorRT glue shared by the four ftp plugins: logging through the ILoggerFinder TensorRT hands the
 * library, plugin-field parsing, dtype mapping and a CRTP base that implements the parts of
 * IPluginV3 / IPluginV3OneCore / IPluginV3OneBuild / IPluginV3OneRuntime that are the same for
 * every plugin. Written against the public TensorRT 10.x headers (NvInferRuntime.h).
 */
#ifndef FTP_PLUGIN_COMMON_H
#define FTP_PLUGIN_COMMON_H

#include "ftp_kernels.h"

#include <NvInferRuntime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ftp
{
namespace plugin
{

constexpr char const* kPLUGIN_VERSION = "1"; // ONNX attribute plugin_version
constexpr char const* kPLUGIN_NAMESPACE = ""; // ONNX attribute plugin_namespace

//! Called by the exported setLoggerFinder(); thread safe.
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

//! Logs through TensorRT's logger when one was handed to the library (silent otherwise).
void log(nvinfer1::ILogger::Severity severity, std::string const& msg) noexcept;

inline void logError(std::string const& msg) noexcept
{
    log(nvinfer1::ILogger::Severity::kERROR, msg);
}

//! Hidden-state types the kernels take: float32, float16, bfloat16.
inline bool isHiddenType(nvinfer1::DataType t) noexcept
{
    return t == nvinfer1::DataType::kFLOAT || t == nvinfer1::DataType::kHALF || t == nvinfer1::DataType::kBF16;
}

inline bool toFtpDtype(nvinfer1::DataType t, ftp_dtype_t& out) noexcept
{
    switch (t)
    {
    case nvinfer1::DataType::kFLOAT: out = FTP_DTYPE_FLOAT32; return true;
    case nvinfer1::DataType::kHALF: out = FTP_DTYPE_FLOAT16; return true;
    case nvinfer1::DataType::kBF16: out = FTP_DTYPE_BFLOAT16; return true;
    default: return false;
    }
}

inline bool isLinear(nvinfer1::DynamicPluginTensorDesc const& d) noexcept
{
    return d.desc.format == nvinfer1::TensorFormat::kLINEAR;
}

//! Integer field (the ONNX parser passes INT attributes as kINT32); false if absent-typed.
bool readIntField(nvinfer1::PluginField const& f, int64_t& out) noexcept;

//! Float field (the ONNX parser passes FLOAT attributes as kFLOAT32).
bool readFloatField(nvinfer1::PluginField const& f, float& out) noexcept;

//! Logs and returns false if cudaError_t != cudaSuccess.
bool checkLaunch(cudaError_t err, char const* plugin) noexcept;

/*!
 * The parts of an IPluginV3 that are the same for every ftp plugin. Derived provides:
 *   static constexpr char const* kNAME;
 *   void appendFields(std::vector<nvinfer1::PluginField>& fields);   // attributes to serialize
 * and the per-plugin IPluginV3OneBuild / IPluginV3OneRuntime methods.
 */
template <typename Derived>
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime
{
public:
    PluginBase() = default;
    PluginBase(PluginBase const&) = default;
    PluginBase& operator=(PluginBase const&) = delete;
    ~PluginBase() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override
    {
        switch (type)
        {
        case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    nvinfer1::IPluginV3* clone() noexcept override
    {
        try
        {
            return new Derived(static_cast<Derived const&>(*this));
        }
        catch (std::exception const& e)
        {
            logError(std::string(Derived::kNAME) + ": clone failed: " + e.what());
        }
        return nullptr;
    }

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override
    {
        return Derived::kNAME;
    }
    char const* getPluginVersion() const noexcept override
    {
        return kPLUGIN_VERSION;
    }
    char const* getPluginNamespace() const noexcept override
    {
        return kPLUGIN_NAMESPACE;
    }

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const*, int32_t, nvinfer1::DynamicPluginTensorDesc const*,
        int32_t) noexcept override
    {
        return 0;
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const*, int32_t, nvinfer1::PluginTensorDesc const*,
        int32_t) noexcept override
    {
        return 0;
    }

    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override
    {
        return clone(); // no per-context resources: all scratch memory is TensorRT's workspace
    }

    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        mFields.clear();
        static_cast<Derived*>(this)->appendFields(mFields);
        mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
        mFieldCollection.fields = mFields.data();
        return &mFieldCollection;
    }

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

/*!
 * Creator base. Derived provides kNAME, the field list in its constructor (addField) and
 * createPlugin().
 */
class CreatorBase : public nvinfer1::IPluginCreatorV3One
{
public:
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override
    {
        mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
        mFieldCollection.fields = mFieldNames.empty() ? nullptr : mFieldNames.data();
        return &mFieldCollection;
    }
    char const* getPluginVersion() const noexcept override
    {
        return kPLUGIN_VERSION;
    }
    char const* getPluginNamespace() const noexcept override
    {
        return kPLUGIN_NAMESPACE;
    }

protected:
    void addField(char const* name, nvinfer1::PluginFieldType type)
    {
        mFieldNames.emplace_back(name, nullptr, type, 1);
    }

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace plugin
} // namespace ftp

#endif // FTP_PLUGIN_COMMON_H
