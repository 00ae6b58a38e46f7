// minmax: the exact observed range. Never clips, so a single outlier stretches the grid.
#include "qtool/calib/methods.h"

namespace qtool::calib {

void register_minmax(std::vector<MethodInfo>& methods) {
  methods.push_back({"minmax", "observed minimum and maximum (no clipping)",
                     [](const TensorStats& s, const RangeConfig&) { return Range{s.min, s.max}; }, false});
}

}  // namespace qtool::calib
