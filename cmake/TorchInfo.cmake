# Ask the Python that builds us which torch it has: version, CUDA version (empty for a CPU build)
# and where its CMake package lives. torch is never a build requirement: we build against the
# torch that is installed (pip install --no-build-isolation).
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
    "import torch, torch.utils; print(torch.__version__); print(torch.version.cuda or ''); print(torch.utils.cmake_prefix_path)"
  OUTPUT_VARIABLE _torch_info
  RESULT_VARIABLE _torch_rc
  ERROR_VARIABLE _torch_err
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR
    "nncme builds against the installed torch, but `import torch` failed in ${Python_EXECUTABLE}:\n"
    "${_torch_err}\nInstall torch first, then `pip install --no-build-isolation .`")
endif()
string(REPLACE "\n" ";" _torch_info "${_torch_info}")
list(GET _torch_info 0 NNCME_TORCH_VERSION)
list(GET _torch_info 1 NNCME_TORCH_CUDA)
list(GET _torch_info 2 _torch_prefix)
list(APPEND CMAKE_PREFIX_PATH "${_torch_prefix}")
message(STATUS "nncme: torch ${NNCME_TORCH_VERSION}, CUDA '${NNCME_TORCH_CUDA}', prefix ${_torch_prefix}")
