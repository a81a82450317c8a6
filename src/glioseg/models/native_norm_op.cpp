// GroupNorm with autograd as one PyTorch operator, glioseg_native::group_norm: the library of
// native_norm.cpp (reached through two function pointers, set by set_kernels) wrapped in a C++
// torch::autograd::Function.
//
// Built and loaded by glioseg/models/native_norm.py against the installed PyTorch's headers, once per
// PyTorch, compiler and source (not per CPU: it only calls the per-CPU library). Why: at SegResNet's
// deepest level (128x12^3, 0.1-0.2 ms a call) the Python around the library's two calls (checks,
// allocations, a Python autograd.Function and its backward node) cost 10-20 us hot and several times
// that when its code has gone cold between two layers, as it does in a training step; here the
// operator is dispatched and differentiated by PyTorch's C++ like its own group_norm.
//   forward   y, mean, rstd by the library, or by PyTorch's aten::native_group_norm (torch_forward:
//             at the small levels its channels-last forward is the faster one)
//   backward  dx, dgamma, dbeta by the library, from the forward's fp32 mean and rstd
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/native_group_norm.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

namespace {

using Forward = void (*)(int, const void*, const float*, const float*, void*, float*, float*, int64_t, int64_t,
                         int64_t, int64_t, double, int);
using Backward = void (*)(int, const void*, const void*, const float*, const float*, const float*, void*, float*,
                          float*, int64_t, int64_t, int64_t, int64_t, int);
Forward forward_kernel = nullptr;
Backward backward_kernel = nullptr;

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

const float* fp32_ptr(const at::Tensor& t) { return t.defined() ? t.const_data_ptr<float>() : nullptr; }

// gamma or beta as the library reads them: contiguous fp32 (no copy where they already are)
at::Tensor fp32(const at::Tensor& t) {
  return t.defined() ? t.detach().to(at::kFloat).contiguous() : at::Tensor();
}

int64_t voxels_of(const at::Tensor& x) { return x.numel() / (x.size(0) * x.size(1)); }

struct GroupNormFn : public torch::autograd::Function<GroupNormFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias, int64_t groups, double eps, bool torch_forward) {
    const int64_t n = x.size(0), channels = x.size(1);
    at::Tensor y, mean, rstd;
    if (torch_forward) {
      std::tie(y, mean, rstd) = at::native_group_norm(x, weight, bias, n, channels, voxels_of(x), groups, eps);
      mean = mean.to(at::kFloat);   // bf16 statistics where there are no affine parameters
      rstd = rstd.to(at::kFloat);
    } else {
      y = at::empty_like(x);       // x is channels-last: its layout is kept
      mean = at::empty({n, groups}, x.options().dtype(at::kFloat));
      rstd = at::empty({n, groups}, x.options().dtype(at::kFloat));
      const at::Tensor w = fp32(weight.value_or(at::Tensor())), b = fp32(bias.value_or(at::Tensor()));
      forward_kernel(x.scalar_type() == at::kBFloat16, x.const_data_ptr(), fp32_ptr(w), fp32_ptr(b),
                     y.mutable_data_ptr(), mean.mutable_data_ptr<float>(), rstd.mutable_data_ptr<float>(), n,
                     voxels_of(x), channels, groups, eps, at::get_num_threads());
    }
    ctx->save_for_backward({x, weight ? *weight : at::Tensor(), mean, rstd});
    ctx->saved_data["groups"] = groups;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &mean = saved[2], &rstd = saved[3];
    const int64_t n = x.size(0), channels = x.size(1), groups = ctx->saved_data["groups"].toInt();
    const at::Tensor dy = grads[0].to(x.scalar_type()).contiguous(at::MemoryFormat::ChannelsLast3d);
    const bool has_weight = weight.defined();
    at::Tensor dx, dw, db;
    if (ctx->needs_input_grad(0)) dx = at::empty_like(x);
    if (has_weight && ctx->needs_input_grad(1)) dw = at::empty({channels}, x.options().dtype(at::kFloat));
    if (has_weight && ctx->needs_input_grad(2)) db = at::empty({channels}, x.options().dtype(at::kFloat));
    const at::Tensor w = fp32(weight);
    backward_kernel(x.scalar_type() == at::kBFloat16, dy.const_data_ptr(), x.const_data_ptr(), fp32_ptr(w),
                    mean.const_data_ptr<float>(), rstd.const_data_ptr<float>(),
                    dx.defined() ? dx.mutable_data_ptr() : nullptr,
                    dw.defined() ? dw.mutable_data_ptr<float>() : nullptr,
                    db.defined() ? db.mutable_data_ptr<float>() : nullptr, n, voxels_of(x), channels, groups,
                    at::get_num_threads());
    if (dw.defined()) dw = dw.to(weight.scalar_type());
    if (db.defined()) db = db.to(weight.scalar_type());
    return {dx, dw, db, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

void check_param(const std::optional<at::Tensor>& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(!t || !t->defined() || (t->dim() == 1 && t->size(0) == x.size(1) && t->device().is_cpu()),
              "glioseg_native::group_norm: ", name, " must hold one value per channel");
}

// native_norm.group_norm checks the same in Python first (with ValueErrors naming the shapes); these
// keep a direct call from reading past a tensor.
at::Tensor group_norm(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                      const std::optional<at::Tensor>& bias, int64_t groups, double eps, bool torch_forward) {
  TORCH_CHECK(forward_kernel && backward_kernel, "glioseg_native::group_norm: set_kernels was not called");
  TORCH_CHECK(x.dim() == 5 && x.device().is_cpu() && x.is_contiguous(at::MemoryFormat::ChannelsLast3d) &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "glioseg_native::group_norm: x must be a 5-D channels-last fp32 / bf16 CPU tensor");
  TORCH_CHECK(groups > 0 && x.size(1) % groups == 0, "glioseg_native::group_norm: channels not divisible by groups");
  check_param(weight, x, "weight");
  check_param(bias, x, "bias");
  return GroupNormFn::apply(x, weight, bias, groups, eps, torch_forward);
}

void set_kernels(int64_t forward, int64_t backward) {
  forward_kernel = reinterpret_cast<Forward>(forward);
  backward_kernel = reinterpret_cast<Backward>(backward);
}

int64_t abi() { return 1; }

}  // namespace

TORCH_LIBRARY(glioseg_native, m) {
  m.def("group_norm(Tensor x, Tensor? weight, Tensor? bias, int groups, float eps, bool torch_forward) -> Tensor");
  m.impl("group_norm", c10::DispatchKey::CompositeImplicitAutograd, TORCH_FN(group_norm));
  m.def("set_kernels(int forward, int backward) -> ()", &set_kernels);
  m.def("abi() -> int", &abi);
}
