"""The plugins' tensor types as TensorRT sees them (issue 19, items 2 and 3): no kBOOL / kUINT8 plugin
tensor (NvInferRuntimePlugin.h: not supported), the flags `valid` / `active` are kINT32, and
FtpThresholdGather's size tensor is kINT32.

Two checks: the type tables in the plugin headers (always), and a compiled probe that links the
TensorRT glue (the kernels' C API stubbed out) and asks each plugin what getOutputDataTypes and
supportsFormatCombination answer, and how large its workspace is (where TensorRT headers and g++
are found, as test_plugin_build.py's glue compile)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.plugins.test_plugin_build import GLUE_FILES, PLUGINS, _cuda_include, _tensorrt_include

HEADERS = {re.search(r'kNAME = "(\w+)"', p.read_text()).group(1): p for p in sorted(PLUGINS.rglob("ftp*Plugin.h"))}
# position of each flag / size tensor in inputs + outputs, per plugin
INT32_SLOTS = {
    "FtpTopKGather": {2: "valid", 5: "active"},
    "FtpTopKScatter": {3: "active"},
    "FtpThresholdGather": {2: "valid", 5: "count"},
    "FtpRowScatter": {},
}


def _io_table(header: Path) -> list[str]:
    m = re.search(r"kIO\[\]\s*=\s*\{([^}]*)\}", header.read_text())
    assert m, f"no kIO table in {header.name}"
    return re.findall(r"IoType::(\w+)", m.group(1))


def test_type_tables_have_no_bool_and_int32_flags():
    common = (PLUGINS / "common" / "ftpPluginCommon.h").read_text()
    enum = re.search(r"enum class IoType[^{]*\{([^}]*)\}", common).group(1)
    assert "kBOOL" not in enum and "kUINT8" not in enum
    assert "DataType::kBOOL" not in common and "DataType::kUINT8" not in common
    assert set(HEADERS) == set(INT32_SLOTS)
    for name, header in HEADERS.items():
        io = _io_table(header)
        assert io and io[0] == "kHIDDEN"
        assert not {"kBOOL", "kUINT8"} & set(io), f"{name}: {io}"
        for pos in INT32_SLOTS[name]:
            assert io[pos] == "kINT32", f"{name}: tensor {pos} ({INT32_SLOTS[name][pos]}) is {io[pos]}"


PROBE = r"""
#include "ftpRowScatterPlugin/ftpRowScatterPlugin.h"
#include "ftpThresholdGatherPlugin/ftpThresholdGatherPlugin.h"
#include "ftpTopKGatherPlugin/ftpTopKGatherPlugin.h"
#include "ftpTopKScatterPlugin/ftpTopKScatterPlugin.h"

#include <cstdio>

using namespace nvinfer1;
using namespace ftp::plugin;

// The kernels' C API, stubbed: the probe never launches; workspace sizes are recognisable.
extern "C" {
int64_t ftp_topk_slot_count(int64_t T, int32_t) { return T; }
size_t ftp_topk_gather_workspace_size(int64_t, int64_t) { return 1000; }
size_t ftp_topk_scatter_workspace_size(int64_t, int64_t) { return 2000; }
size_t ftp_threshold_gather_workspace_size(int64_t, int64_t) { return 3000; }
size_t ftp_row_scatter_workspace_size(int64_t, int64_t) { return 4000; }
cudaError_t ftp_topk_gather_launch(void const*, float const*, uint8_t const*, void*, int64_t*, uint8_t*, ftp_dtype_t,
    int64_t, int64_t, int64_t, int32_t, void*, size_t, cudaStream_t) { return cudaSuccess; }
cudaError_t ftp_topk_scatter_launch(void const*, void const*, int64_t const*, uint8_t const*, void*, ftp_dtype_t,
    int64_t, int64_t, int64_t, int64_t, void*, size_t, cudaStream_t) { return cudaSuccess; }
cudaError_t ftp_threshold_gather_launch(void const*, float const*, uint8_t const*, float, void*, int64_t*, int32_t*,
    ftp_dtype_t, int64_t, int64_t, int64_t, void*, size_t, cudaStream_t) { return cudaSuccess; }
cudaError_t ftp_row_scatter_launch(void const*, void const*, int64_t const*, void*, ftp_dtype_t, int64_t, int64_t,
    int64_t, int64_t, void*, size_t, cudaStream_t) { return cudaSuccess; }
cudaError_t ftp_flags_from_int32(int32_t const*, uint8_t*, int64_t, cudaStream_t) { return cudaSuccess; }
cudaError_t ftp_flags_to_int32(uint8_t const*, int32_t*, int64_t, cudaStream_t) { return cudaSuccess; }
char const* cudaGetErrorString(cudaError_t) { return "stub"; }
}

// Every DataType value up to 15 (the enum grows between versions; unknown ones print as numbers).
constexpr int32_t kNB_TYPES = 16;

template <typename P>
void probe(P& plugin)
{
    int32_t const nIn = P::kNB_INPUTS, nOut = P::kNB_OUTPUTS;
    for (DataType hidden : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
    {
        DataType inTypes[8]{}, outTypes[8]{};
        inTypes[0] = hidden;
        int32_t const rc = plugin.getOutputDataTypes(outTypes, nOut, inTypes, nIn);
        std::printf("%s outtypes %d %d", P::kNAME, static_cast<int>(hidden), rc);
        for (int32_t i = 0; i < nOut; ++i)
        {
            std::printf(" %d", static_cast<int>(outTypes[i]));
        }
        std::printf("\n");
        for (int32_t pos = 0; pos < nIn + nOut; ++pos)
        {
            std::printf("%s accepts %d %d", P::kNAME, static_cast<int>(hidden), pos);
            for (int32_t t = 0; t < kNB_TYPES; ++t)
            {
                DynamicPluginTensorDesc desc[8]{};
                for (int32_t i = 0; i < nIn + nOut; ++i)
                {
                    desc[i].desc.format = TensorFormat::kLINEAR;
                }
                desc[0].desc.type = hidden;
                desc[pos].desc.type = static_cast<DataType>(t);
                if (pos == 0 || plugin.supportsFormatCombination(pos, desc, nIn, nOut))
                {
                    if (pos != 0 || t == static_cast<int32_t>(hidden))
                    {
                        std::printf(" %d", t);
                    }
                }
            }
            std::printf("\n");
        }
    }
    DynamicPluginTensorDesc in[8]{};
    in[0].max.nbDims = 3;
    in[0].max.d[0] = 3;
    in[0].max.d[1] = 100; // B*T = 300 -> flag buffers of 512 bytes
    in[0].max.d[2] = 8;
    std::printf("%s workspace %zu\n", P::kNAME, plugin.getWorkspaceSize(in, nIn, nullptr, nOut));
}

int main()
{
    std::printf("kBOOL %d kUINT8 %d kINT32 %d kINT64 %d kFLOAT %d\n", static_cast<int>(DataType::kBOOL),
        static_cast<int>(DataType::kUINT8), static_cast<int>(DataType::kINT32), static_cast<int>(DataType::kINT64),
        static_cast<int>(DataType::kFLOAT));
    FtpTopKGatherPlugin topkGather(32768);
    FtpTopKScatterPlugin topkScatter;
    FtpThresholdGatherPlugin thresholdGather(0.5f);
    FtpRowScatterPlugin rowScatter;
    probe(topkGather);
    probe(topkScatter);
    probe(thresholdGather);
    probe(rowScatter);
    return 0;
}
"""


@pytest.fixture(scope="module")
def probe_output(tmp_path_factory) -> str:
    trt, cuda = _tensorrt_include(), _cuda_include()
    if trt is None or cuda is None or shutil.which("g++") is None:
        pytest.skip("TensorRT headers (TensorRT_ROOT), CUDA headers or g++ not found")
    tmp = tmp_path_factory.mktemp("probe")
    src = tmp / "probe.cpp"
    src.write_text(PROBE)
    exe = tmp / "probe"
    cmd = ["g++", "-std=c++17", "-O0", "-isystem", str(trt), "-isystem", str(cuda), "-I", str(PLUGINS),
           "-I", str(PLUGINS / "common"), str(src), *map(str, GLUE_FILES), "-o", str(exe)]
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, f"{' '.join(cmd)} failed:\n{built.stderr}"
    ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


def test_compiled_plugins_declare_int32_flags_and_size_tensor(probe_output):
    lines = probe_output.splitlines()
    enum = dict(zip(lines[0].split()[::2], map(int, lines[0].split()[1::2])))
    float_, i32, i64 = enum["kFLOAT"], enum["kINT32"], enum["kINT64"]
    forbidden = {enum["kBOOL"], enum["kUINT8"]}
    accepts: dict[tuple[str, int, int], set[int]] = {}
    outtypes: dict[tuple[str, int], list[int]] = {}
    workspace: dict[str, int] = {}
    for line in lines[1:]:
        name, what, *rest = line.split()
        nums = list(map(int, rest))
        if what == "accepts":
            accepts[(name, nums[0], nums[1])] = set(nums[2:])
        elif what == "outtypes":
            assert nums[1] == 0, line
            outtypes[(name, nums[0])] = nums[2:]
        else:
            workspace[name] = nums[0]
    assert {k[0] for k in accepts} == set(INT32_SLOTS)
    for (name, _hidden, pos), types in accepts.items():
        assert types and not types & forbidden, f"{name} tensor {pos} accepts {types}"
        if pos in INT32_SLOTS[name]:
            assert types == {i32}, f"{name} {INT32_SLOTS[name][pos]} accepts {types}"
    for (name, hidden), types in outtypes.items():
        n_in = len({k[2] for k in accepts if k[0] == name}) - len(types)
        assert not set(types) & forbidden
        for i, t in enumerate(types):  # what getOutputDataTypes says is what supportsFormatCombination takes
            assert accepts[(name, hidden, n_in + i)] == {t}
    fp32 = enum["kFLOAT"]
    assert outtypes[("FtpThresholdGather", fp32)] == [float_, i64, i32]  # count: the kINT32 size tensor
    assert outtypes[("FtpTopKGather", fp32)] == [float_, i64, i32]
    # flag staging in front of the kernel's workspace: B*T = 300 bytes rounded up to 512 per buffer
    assert workspace == {"FtpTopKGather": 2 * 512 + 1000, "FtpTopKScatter": 512 + 2000,
                         "FtpThresholdGather": 512 + 3000, "FtpRowScatter": 4000}
