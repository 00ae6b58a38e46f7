// The bundled digits CNN prepared at opset 13 and 64 of its samples split as the quality guard
// splits them (48 calibrate, 16 held out): shared by the guard and sensitivity tests.
#pragma once

#include <memory>

#include "qtool/onnx_io/onnx_io.h"
#include "qtool/pipeline/guard.h"
#include "qtool/pipeline/samples.h"
#include "qtool/quant/static_quant.h"
#include "test_util.h"

namespace qtool::pipeline::testing_digits {

struct DigitsSplit {
  ir::Model reference = onnx_io::load_model(qtool::testing::source_path("calibration_samples/digits/digits_cnn.onnx"));
  std::shared_ptr<data::SelectedSource> samples;
  std::unique_ptr<data::SelectedSource> calib, held_out;

  DigitsSplit() {
    quant::prepare_model(reference, 13);
    SampleSpec spec;
    spec.path = qtool::testing::source_path("calibration_samples/digits");
    spec.samples = 64;
    samples = open_samples(spec, reference, "--calib");
    const GuardSplit split = split_for_guard(samples->size(), true);
    calib = std::make_unique<data::SelectedSource>(samples, split.calib);
    held_out = std::make_unique<data::SelectedSource>(samples, split.held_out);
  }
};

}  // namespace qtool::pipeline::testing_digits
