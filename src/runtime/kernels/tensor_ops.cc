// Ops that create, convert or pick tensors: Constant, Identity, Dropout (inference), Cast,
// CastLike, and the index-driven ops (Gather*, Scatter*, OneHot, NonZero, TopK, CumSum, Trilu).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernel_util.h"
#include "kernels.h"

namespace qtool::runtime::kernels {

namespace {

/// Constant: exactly one of value, value_float(s), value_int(s), value_string(s).
void constant_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  if (const ir::Attribute* a = n.find_attr("value")) {
    QTOOL_CHECK(!a->tensors.empty(), ErrorCode::kInvalidModel, "{} (Constant): 'value' holds no tensor", n.describe());
    ctx.set_output(0, a->tensors[0]);
  } else if (const ir::Attribute* a = n.find_attr("value_float")) {
    ctx.set_output(0, Tensor::scalar<float>(a->f));
  } else if (const ir::Attribute* a = n.find_attr("value_floats")) {
    ctx.set_output(0, Tensor::from_vector<float>({static_cast<int64_t>(a->floats.size())}, a->floats));
  } else if (const ir::Attribute* a = n.find_attr("value_int")) {
    ctx.set_output(0, Tensor::scalar<int64_t>(a->i));
  } else if (const ir::Attribute* a = n.find_attr("value_ints")) {
    ctx.set_output(0, Tensor::from_vector<int64_t>({static_cast<int64_t>(a->ints.size())}, a->ints));
  } else if (const ir::Attribute* a = n.find_attr("value_string")) {
    ctx.set_output(0, Tensor::from_strings({}, {a->s}));
  } else if (const ir::Attribute* a = n.find_attr("value_strings")) {
    ctx.set_output(0, Tensor::from_strings({static_cast<int64_t>(a->strings.size())}, a->strings));
  } else {
    fail(ErrorCode::kUnsupported, "{} (Constant): no supported value attribute (sparse_value is not supported)",
         n.describe());
  }
}

void identity_kernel(KernelContext& ctx) { ctx.set_output(0, ctx.input(0)); }

/// Dropout at inference: output = input, mask = all true.
void dropout_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  ctx.set_output(0, x);
  if (ctx.num_outputs() > 1 && ctx.wants_output(1)) {
    Tensor mask(DataType::kBool, x.shape());
    std::memset(mask.mutable_raw(), 1, mask.nbytes());
    ctx.set_output(1, std::move(mask));
  }
}

/// Cast with the common float<->int paths done directly (Tensor::cast handles the rest).
Tensor cast_tensor(const Tensor& x, DataType to) {
  if (x.dtype() == to) return x;
  if (x.dtype() == DataType::kString || to == DataType::kString) {
    QTOOL_CHECK(x.dtype() == DataType::kString && dtype_is_float(to), ErrorCode::kUnsupported,
                "cast from {} to {} is not supported", dtype_name(x.dtype()), dtype_name(to));
    Tensor out = Tensor(DataType::kDouble, x.shape());
    double* o = out.mutable_data<double>();
    for (int64_t i = 0; i < x.numel(); ++i) o[i] = std::strtod(x.strings()[i].c_str(), nullptr);
    return out.cast(to);
  }
  return x.cast(to);
}

void cast_kernel(KernelContext& ctx) {
  const int64_t to = ctx.node().required_attr("to").i;
  QTOOL_CHECK(dtype_is_known(static_cast<int32_t>(to)), ErrorCode::kUnsupported, "{} (Cast): unknown target type {}",
              ctx.node().describe(), to);
  ctx.set_output(0, cast_tensor(ctx.input(0), static_cast<DataType>(to)));
}

void cast_like_kernel(KernelContext& ctx) { ctx.set_output(0, cast_tensor(ctx.input(0), ctx.input(1).dtype())); }

}  // namespace

void register_tensor_kernels(KernelRegistry& r) {
  r.add("", "Constant", 1, constant_kernel);
  r.add("", "Identity", 1, identity_kernel);
  r.add("", "Dropout", 1, dropout_kernel);
  r.add("", "Cast", 1, cast_kernel);
  r.add("", "CastLike", 15, cast_like_kernel);
}

}  // namespace qtool::runtime::kernels
