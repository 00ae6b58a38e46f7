// percentile: clip a fixed fraction of the values, read from the streamed histogram.
//
// Symmetric: T is the p-th percentile of |x|. Asymmetric: (100 - p)/2 percent is cut from each
// side (the convention of ONNX Runtime's PercentileCalibrater). Inside a bin the value is
// interpolated linearly, so the error is at most one bin width (range / 2048 or less).
#include <algorithm>
#include <cmath>

#include "qtool/calib/methods.h"

namespace qtool::calib {

void register_percentile(std::vector<MethodInfo>& methods) {
  methods.push_back({"percentile", "clip to the --percentile (default 99.999) of the values",
                     [](const TensorStats& s, const RangeConfig& c) -> Range {
                       QTOOL_CHECK(c.percentile > 0.0 && c.percentile <= 100.0, ErrorCode::kConfig,
                                   "percentile must be in (0, 100], not {}", c.percentile);
                       QTOOL_CHECK(!s.hist.empty(), ErrorCode::kInternal, "no histogram for tensor '{}'", s.name);
                       const double p = c.percentile / 100.0;
                       if (c.symmetric) {
                         const double t = s.hist.abs_quantile(p);
                         return {-t, t};
                       }
                       const double cut = (1.0 - p) / 2.0;
                       return {s.hist.quantile(cut), s.hist.quantile(1.0 - cut)};
                     }});
}

}  // namespace qtool::calib
