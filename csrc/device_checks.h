// The device check every op entry point makes: all operands on the device of one of them, with a
// message that names the argument.
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>

namespace nncme {

// One operand of an op: its name in the schema, and the tensor.
struct Operand {
  const char* name;
  const at::Tensor& tensor;
};

// Every operand on `device`, the device of the operand named `anchor`. The dispatcher runs the
// CUDA kernel as soon as one operand is on a GPU, so a kernel must never assume the rest are.
inline void check_devices(const char* anchor, const at::Device& device,
                          std::initializer_list<Operand> operands) {
  for (const Operand& op : operands) {
    TORCH_CHECK(op.tensor.device() == device, op.name, " must be on ", device, " (the device of ",
                anchor, "), got ", op.tensor.device());
  }
}

}  // namespace nncme
