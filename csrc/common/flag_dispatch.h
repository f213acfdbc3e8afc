// The kernels' two compile-time flags from their runtime values.
#pragma once

namespace nested_kernels {

// run.template operator()<HAS_MOMENTUM, DGD>() with the flags as template constants.
template <typename Run>
void dispatch_momentum_dgd(bool has_momentum, bool dgd, const Run& run) {
  if (has_momentum) {
    dgd ? run.template operator()<true, true>() : run.template operator()<true, false>();
  } else {
    dgd ? run.template operator()<false, true>() : run.template operator()<false, false>();
  }
}

}  // namespace nested_kernels
