// The pybind11 module nncme._C: build information only. Tensor operations are registered with
// the dispatcher (registration.cpp) when this library is loaded.
#include <pybind11/pybind11.h>

#include <string>

#ifndef NNCME_WITH_CUDA
#define NNCME_WITH_CUDA 0
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "nncme compiled operators (registered as torch.ops.nncme.*)";
  m.def("build_info", []() {
    py::dict info;
    info["torch_version"] = std::string(NNCME_TORCH_VERSION);
    info["cuda"] = bool(NNCME_WITH_CUDA);
    info["cuda_archs"] = std::string(NNCME_CUDA_ARCHS);
#ifdef _OPENMP
    info["openmp"] = true;
    info["openmp_version"] = int(_OPENMP);
#else
    info["openmp"] = false;
#endif
#if defined(__clang__)
    info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    info["compiler"] = std::string("gcc ") + __VERSION__;
#endif
    return info;
  });
}
