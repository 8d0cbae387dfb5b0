"""Build checks of plugins/: every CUDA kernel compiles with nvcc (skipped where nvcc is absent), the
TensorRT glue compiles where TensorRT headers are found (TensorRT_ROOT), and the file lists in
CMakeLists.txt, the extension loader and the README agree with the sources on disk."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ftp_export.trt.custom_ops import NODES

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "plugins"
CU_FILES = sorted(PLUGINS.rglob("*.cu"))
GLUE_FILES = sorted(p for p in PLUGINS.rglob("*.cpp") if "torch_ext" not in p.parts)
ARCH = os.environ.get("FTP_TEST_CUDA_ARCH", "sm_90")


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    cand = Path(home, "bin", "nvcc") if home else None
    return str(cand) if cand and cand.is_file() else None


def _compile_all(cmds: list[list[str]]) -> list[tuple[list[str], subprocess.CompletedProcess]]:
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        results = list(pool.map(lambda c: subprocess.run(c, capture_output=True, text=True, timeout=300), cmds))
    return list(zip(cmds, results))


def test_sources_are_listed_everywhere():
    assert CU_FILES, "no .cu files under plugins/"
    cmake = (PLUGINS / "CMakeLists.txt").read_text()
    from ftp_export.trt import kernels_ext

    ext_sources = {PLUGINS / s for s in kernels_ext.KERNEL_SOURCES}
    for cu in CU_FILES:
        rel = cu.relative_to(PLUGINS).as_posix()
        assert f"${{FTP_PLUGIN_DIR}}/{rel}" in cmake, f"{rel} is not built by CMakeLists.txt"
        assert cu in ext_sources, f"{rel} is not compiled into the PyTorch extension (kernels_ext.KERNEL_SOURCES)"
    for cpp in GLUE_FILES:
        rel = cpp.relative_to(PLUGINS).as_posix()
        assert f"${{FTP_PLUGIN_DIR}}/{rel}" in cmake, f"{rel} is not built by CMakeLists.txt"
    assert (PLUGINS / kernels_ext.BINDING_SOURCE).is_file()


def test_plugin_names_match_the_onnx_nodes():
    readme = (PLUGINS / "README.md").read_text()
    glue = "\n".join(p.read_text() for p in GLUE_FILES + sorted(PLUGINS.rglob("*Plugin.h")))
    declared = set(re.findall(r'kNAME = "(\w+)"', glue))
    assert declared == set(NODES)
    for node in NODES:
        assert f"`{node}`" in readme


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found (PATH / CUDA_HOME)")
def test_kernels_compile_with_nvcc(tmp_path):
    nvcc = _nvcc()
    cmds = [
        [nvcc, "-std=c++17", "-O2", f"-arch={ARCH}", "-c", str(cu), "-o", str(tmp_path / f"{cu.stem}.o")]
        for cu in CU_FILES
    ]
    for cmd, res in _compile_all(cmds):
        assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
        ours = [line for line in res.stderr.splitlines() if "warning" in line.lower() and "plugins" in line]
        assert not ours, f"{cmd[-3]} compiled with warnings:\n{res.stderr}"


def _tensorrt_include() -> Path | None:
    roots = [os.environ.get("TensorRT_ROOT"), "/usr", "/usr/local/tensorrt", "/opt/tensorrt"]
    for root in filter(None, roots):
        for sub in ("include", "include/x86_64-linux-gnu", "include/aarch64-linux-gnu"):
            if (Path(root) / sub / "NvInferRuntime.h").is_file():
                return Path(root) / sub
    return None


def _cuda_include() -> Path | None:
    nvcc = _nvcc()
    cands = [Path(nvcc).resolve().parents[1] / "include"] if nvcc else []
    cands += [Path(h) / "include" for h in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")) if h]
    cands += [Path("/usr/local/cuda/include"), *sorted(Path("/usr/local").glob("cuda-*/include"), reverse=True)]
    return next((c for c in cands if (c / "cuda_runtime_api.h").is_file()), None)


@pytest.mark.skipif(_tensorrt_include() is None, reason="TensorRT headers not found (set TensorRT_ROOT)")
@pytest.mark.skipif(shutil.which("g++") is None or _cuda_include() is None, reason="g++ or CUDA headers missing")
def test_tensorrt_glue_compiles():
    trt, cuda = _tensorrt_include(), _cuda_include()
    cmds = [
        [
            "g++",
            "-std=c++17",
            "-fsyntax-only",
            "-Wall",
            "-Werror",
            "-isystem",
            str(trt),
            "-isystem",
            str(cuda),
            str(cpp),
        ]
        for cpp in GLUE_FILES
    ]
    for cmd, res in _compile_all(cmds):
        assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"


@pytest.mark.skipif(_tensorrt_include() is None, reason="TensorRT headers not found (set TensorRT_ROOT)")
@pytest.mark.skipif(shutil.which("cmake") is None or _nvcc() is None, reason="cmake or nvcc not found")
def test_cmake_builds_a_self_contained_plugin_library(tmp_path):
    """Issue 19 item 6: the CMake build needs only TensorRT's headers, links the static CUDA runtime
    only and writes no RPATH; the library loads without libnvinfer (or a GPU) and lists 4 creators."""
    import ctypes

    build = tmp_path / "build"
    arch = ARCH.removeprefix("sm_")
    root = _tensorrt_include().parent  # TensorRT_ROOT's layout: <root>/include/NvInferRuntime.h
    configure = ["cmake", "-S", str(ROOT), "-B", str(build), f"-DTensorRT_ROOT={root}",
                 f"-DCMAKE_CUDA_ARCHITECTURES={arch}", "-DFTP_REQUIRE_TENSORRT=ON"]
    for cmd in (configure, ["cmake", "--build", str(build), "-j", str(max(1, min(8, os.cpu_count() or 1)))]):
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "CUDACXX": _nvcc()})
        assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    lib = build / "libftp_plugins.so"
    assert lib.is_file()
    if shutil.which("readelf"):
        dynamic = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)
        assert not [n for n in needed if "cudart" in n or "nvinfer" in n], needed
        assert "RPATH" not in dynamic and "RUNPATH" not in dynamic
    handle = ctypes.CDLL(str(lib))
    handle.getCreators.restype = ctypes.c_void_p
    count = ctypes.c_int32(0)
    assert handle.getCreators(ctypes.byref(count)) and count.value == len(NODES)
