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
#include <exception>
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

//! The last field of `fc` called `name`, nullptr if there is none.
nvinfer1::PluginField const* findField(nvinfer1::PluginFieldCollection const* fc, char const* name) noexcept;

//! Logs and returns false if cudaError_t != cudaSuccess.
bool checkLaunch(cudaError_t err, char const* plugin) noexcept;

//! Type of one plugin input/output: kHIDDEN is input 0's type (float32, float16 or bfloat16).
//! There is deliberately no bool: TensorRT does not support kBOOL or kUINT8 plugin tensors
//! (NvInferRuntimePlugin.h), so the flags `valid` / `active` are kINT32 (0 / 1) at the plugin
//! boundary, the ONNX graph casts bool <-> int32 around the nodes, and FlagStaging converts them to
//! the kernels' byte flags.
enum class IoType : int32_t
{
    kHIDDEN,
    kFLOAT,
    kINT32,
    kINT64
};

inline nvinfer1::DataType resolveIoType(IoType io, nvinfer1::DataType hidden) noexcept
{
    switch (io)
    {
    case IoType::kFLOAT: return nvinfer1::DataType::kFLOAT;
    case IoType::kINT32: return nvinfer1::DataType::kINT32;
    case IoType::kINT64: return nvinfer1::DataType::kINT64;
    case IoType::kHIDDEN: break;
    }
    return hidden;
}

constexpr size_t kWORKSPACE_ALIGN = 256; // what the kernels' workspace needs (ftp_kernels.h)

//! Bytes of one byte-flag buffer for a [B, T] problem (K <= T, so it holds [B, K] flags too),
//! rounded up so that whatever follows it stays kWORKSPACE_ALIGN-aligned.
inline size_t flagBufferBytes(int64_t B, int64_t T) noexcept
{
    size_t const n = static_cast<size_t>(B) * static_cast<size_t>(T);
    return (n + kWORKSPACE_ALIGN - 1) / kWORKSPACE_ALIGN * kWORKSPACE_ALIGN;
}

//! Workspace of a plugin with `FlagBuffers` int32 <-> byte flag conversions: the flag buffers first,
//! then the kernel's own workspace (see FlagStaging).
template <size_t (*KernelWorkspace)(int64_t, int64_t), int32_t FlagBuffers>
size_t stagedWorkspaceSize(int64_t B, int64_t T) noexcept
{
    return static_cast<size_t>(FlagBuffers) * flagBufferBytes(B, T) + KernelWorkspace(B, T);
}

//! Splits a workspace sized by stagedWorkspaceSize<..., nBuffers>(B, T) into the byte-flag buffers
//! and the kernel's workspace behind them.
class FlagStaging
{
public:
    FlagStaging(void* workspace, size_t workspaceSize, int64_t B, int64_t T, int32_t nBuffers) noexcept
        : mBase(static_cast<uint8_t*>(workspace))
        , mStride(flagBufferBytes(B, T))
        , mUsed(static_cast<size_t>(nBuffers) * mStride)
        , mSize(workspaceSize)
    {
    }
    uint8_t* buffer(int32_t i) const noexcept
    {
        return mBase == nullptr ? nullptr : mBase + static_cast<size_t>(i) * mStride;
    }
    void* kernelWorkspace() const noexcept
    {
        return mBase == nullptr ? nullptr : mBase + mUsed;
    }
    size_t kernelWorkspaceSize() const noexcept
    {
        return mSize > mUsed ? mSize - mUsed : 0;
    }

private:
    uint8_t* mBase;
    size_t mStride;
    size_t mUsed;
    size_t mSize;
};

/*!
 * IPluginV3 / IPluginV3OneCore / IPluginV3OneBuild / IPluginV3OneRuntime for an ftp plugin, driven by
 * a description in Derived:
 *   static constexpr char const* kNAME;                         // plugin (and ONNX op) name
 *   static constexpr int32_t kNB_INPUTS, kNB_OUTPUTS;
 *   static constexpr IoType kIO[kNB_INPUTS + kNB_OUTPUTS];     // input 0 must be kHIDDEN
 *   static constexpr int32_t kINPUT_RANKS[kNB_INPUTS];
 *   static constexpr char const* kEXPECTS;                      // input shapes, for the error message
 *   static constexpr size_t (*kWORKSPACE_SIZE)(int64_t B, int64_t T);  // of input 0 [B,T,...]
 *   cudaError_t launch(PluginTensorDesc const* inputDesc, void const* const* inputs, void* const* outputs,
 *       ftp_dtype_t dtype, void* workspace, size_t workspaceSize, cudaStream_t stream) const;
 * and optionally (defaults below):
 *   int32_t outputShapes(DimsExprs const* inputs, DimsExprs* outputs, IExprBuilder&);  // out 0 = in 0
 *   void appendFields(std::vector<PluginField>&);   // serialized attributes (none)
 *   static void appendFieldNames(std::vector<PluginField>&);  // creator's field list (none)
 *   static IPluginV3* create(PluginFieldCollection const*);   // creator's factory (Derived())
 * IPluginV3OneRuntime::onShapeChange may be overridden as usual.
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

    // ---- defaults of the optional hooks (Derived hides them with its own) --------------------
    int32_t outputShapes(
        nvinfer1::DimsExprs const* inputs, nvinfer1::DimsExprs* outputs, nvinfer1::IExprBuilder& /*eb*/) noexcept
    {
        outputs[0] = inputs[0];
        return 0;
    }
    void appendFields(std::vector<nvinfer1::PluginField>& /*fields*/) {}
    static void appendFieldNames(std::vector<nvinfer1::PluginField>& /*fields*/) {}
    static nvinfer1::IPluginV3* create(nvinfer1::PluginFieldCollection const* /*fc*/)
    {
        return new Derived();
    }

    // ---- IPluginV3 ------------------------------------------------------------------------------
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
            return new Derived(derived());
        }
        catch (std::exception const& e)
        {
            logError(std::string(Derived::kNAME) + ": clone failed: " + e.what());
        }
        return nullptr;
    }

    // ---- IPluginV3OneCore -----------------------------------------------------------------------
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

    // ---- IPluginV3OneBuild ----------------------------------------------------------------------
    int32_t getNbOutputs() const noexcept override
    {
        return Derived::kNB_OUTPUTS;
    }

    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
        int32_t nbInputs) const noexcept override
    {
        if (!hasIoCounts(nbInputs, nbOutputs) || !isHiddenType(inputTypes[0]))
        {
            return -1;
        }
        for (int32_t i = 0; i < Derived::kNB_OUTPUTS; ++i)
        {
            outputTypes[i] = resolveIoType(Derived::kIO[Derived::kNB_INPUTS + i], inputTypes[0]);
        }
        return 0;
    }

    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* /*shapeInputs*/,
        int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override
    {
        bool ok = hasIoCounts(nbInputs, nbOutputs);
        for (int32_t i = 0; ok && i < Derived::kNB_INPUTS; ++i)
        {
            ok = inputs[i].nbDims == Derived::kINPUT_RANKS[i];
        }
        if (!ok)
        {
            logError(std::string(Derived::kNAME) + ": expects " + Derived::kEXPECTS);
            return -1;
        }
        return derived().outputShapes(inputs, outputs, exprBuilder);
    }

    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override
    {
        if (!hasIoCounts(nbInputs, nbOutputs) || pos < 0 || pos >= nbInputs + nbOutputs || !isLinear(inOut[pos]))
        {
            return false;
        }
        nvinfer1::DataType const t = inOut[pos].desc.type;
        return pos == 0 ? isHiddenType(t) : t == resolveIoType(Derived::kIO[pos], inOut[0].desc.type);
    }

    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const*, int32_t, nvinfer1::DynamicPluginTensorDesc const*,
        int32_t) noexcept override
    {
        return 0;
    }

    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t /*nbInputs*/,
        nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept override
    {
        return Derived::kWORKSPACE_SIZE(inputs[0].max.d[0], inputs[0].max.d[1]);
    }

    // ---- IPluginV3OneRuntime --------------------------------------------------------------------
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const*, int32_t, nvinfer1::PluginTensorDesc const*,
        int32_t) noexcept override
    {
        return 0;
    }

    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* /*outputDesc*/,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override
    {
        ftp_dtype_t dtype;
        if (!toFtpDtype(inputDesc[0].type, dtype))
        {
            logError(std::string(Derived::kNAME) + ": unsupported hidden dtype");
            return -1;
        }
        // TensorRT allocates getWorkspaceSize() for the profile's max shapes (the sizes grow with B and T,
        // so that covers these shapes) and does not pass the size to enqueue: nothing to check here, and
        // the launches do not check workspace_size (ftp_kernels.h); this is what these shapes need.
        nvinfer1::Dims const& d = inputDesc[0].dims;
        size_t const wsSize = Derived::kWORKSPACE_SIZE(d.d[0], d.d[1]);
        cudaError_t const err = derived().launch(inputDesc, inputs, outputs, dtype, workspace, wsSize, stream);
        return checkLaunch(err, Derived::kNAME) ? 0 : -1;
    }

    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override
    {
        return clone(); // no per-context resources: all scratch memory is TensorRT's workspace
    }

    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        mFields.clear();
        derived().appendFields(mFields);
        mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
        mFieldCollection.fields = mFields.data();
        return &mFieldCollection;
    }

protected:
    static bool hasIoCounts(int32_t nbInputs, int32_t nbOutputs) noexcept
    {
        return nbInputs == Derived::kNB_INPUTS && nbOutputs == Derived::kNB_OUTPUTS;
    }

private:
    Derived& derived() noexcept
    {
        return static_cast<Derived&>(*this);
    }
    Derived const& derived() const noexcept
    {
        return static_cast<Derived const&>(*this);
    }

    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

/*!
 * IPluginCreatorV3One for Plugin (a PluginBase<Plugin>): name and field list from Plugin, version
 * "1", namespace "", createPlugin() through Plugin::create() (exceptions are logged, not thrown).
 */
template <typename Plugin>
class PluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    PluginCreator()
    {
        Plugin::appendFieldNames(mFieldNames);
    }

    char const* getPluginName() const noexcept override
    {
        return Plugin::kNAME;
    }
    char const* getPluginVersion() const noexcept override
    {
        return kPLUGIN_VERSION;
    }
    char const* getPluginNamespace() const noexcept override
    {
        return kPLUGIN_NAMESPACE;
    }

    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override
    {
        mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
        mFieldCollection.fields = mFieldNames.empty() ? nullptr : mFieldNames.data();
        return &mFieldCollection;
    }

    nvinfer1::IPluginV3* createPlugin(char const* /*name*/, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase /*phase*/) noexcept override
    {
        try
        {
            return Plugin::create(fc);
        }
        catch (std::exception const& e)
        {
            logError(std::string(Plugin::kNAME) + ": " + e.what());
        }
        return nullptr;
    }

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace plugin
} // namespace ftp

//! The launch hook every plugin declares (see PluginBase::enqueue).
#define FTP_PLUGIN_LAUNCH_HOOK                                                                                         \
    cudaError_t launch(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs, void* const* outputs,  \
        ftp_dtype_t dtype, void* workspace, size_t workspaceSize, cudaStream_t stream) const;

//! The hooks of a plugin with creator fields and its own output shapes (the gather plugins).
#define FTP_PLUGIN_FIELD_HOOKS                                                                                         \
    static nvinfer1::IPluginV3* create(nvinfer1::PluginFieldCollection const* fc);                                   \
    static void appendFieldNames(std::vector<nvinfer1::PluginField>& fields);                                         \
    void appendFields(std::vector<nvinfer1::PluginField>& fields);                                                   \
    int32_t outputShapes(                                                                                              \
        nvinfer1::DimsExprs const* inputs, nvinfer1::DimsExprs* outputs, nvinfer1::IExprBuilder& eb) noexcept;        \
    FTP_PLUGIN_LAUNCH_HOOK

#endif // FTP_PLUGIN_COMMON_H
