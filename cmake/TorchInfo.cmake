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
  # Missing, or hidden? pip's isolated build runs this same interpreter with PYTHONPATH and
  # PYTHONNOUSERSITE set so that it sees only the build requirements; without them it may well
  # have torch. (build_backend/nncme_backend.py stops such builds earlier; this is for CMake run
  # by other means.)
  execute_process(
    COMMAND "${CMAKE_COMMAND}" -E env --unset=PYTHONPATH --unset=PYTHONNOUSERSITE
      "${Python_EXECUTABLE}" -c "import torch"
    RESULT_VARIABLE _bare_rc OUTPUT_QUIET ERROR_QUIET)
  string(STRIP "${_torch_err}" _torch_err)
  string(REGEX REPLACE "^.*\n" "" _torch_err "${_torch_err}")  # the exception's own line
  if(_bare_rc EQUAL 0)
    set(_why "torch is installed for ${Python_EXECUTABLE}, but this build cannot see it: it runs in an isolated build environment (pip's default; PYTHONPATH=$ENV{PYTHONPATH})")
    set(_install_torch "")
  else()
    set(_why "`import torch` failed in ${Python_EXECUTABLE}, the interpreter this build uses: ${_torch_err}")
    set(_install_torch "  ${Python_EXECUTABLE} -m pip install torch   # the CPU or CUDA build you want\n")
  endif()
  message(FATAL_ERROR
    "nncme cannot be built here: ${_why}.\n"
    "Its C++ operators are compiled against the torch they will run with, so torch must be "
    "installed first and the build must run where it is (--no-build-isolation). Run:\n"
    "${_install_torch}"
    "  ${Python_EXECUTABLE} -m pip install scikit-build-core pybind11 cmake ninja\n"
    "  ${Python_EXECUTABLE} -m pip install --no-build-isolation .\n")
endif()
string(REPLACE "\n" ";" _torch_info "${_torch_info}")
list(GET _torch_info 0 NNCME_TORCH_VERSION)
list(GET _torch_info 1 NNCME_TORCH_CUDA)
list(GET _torch_info 2 _torch_prefix)
list(APPEND CMAKE_PREFIX_PATH "${_torch_prefix}")
message(STATUS "nncme: torch ${NNCME_TORCH_VERSION}, CUDA '${NNCME_TORCH_CUDA}', prefix ${_torch_prefix}")
