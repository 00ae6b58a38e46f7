// Per-layer plan files (qtool quantize --plan-out plan.json / --plan plan.json).
//
// A plan lists, for every quantizable weight, the format it is written in (a row of
// weight_formats(), or "float") and why (the rule that chose it: default, first/last layer,
// depthwise conv, --layer-bits PATTERN, excluded, an embedding table, a search, or --plan). It is
// written from what the quantizer did, so reading it back gives every weight the same format and the
// same model byte for byte; an edited plan (one layer moved to int8) is honoured, checked against
// what each op can be written as, and reported with the reason "--plan".
//
// Schema (qtool.plan 1.0):
//   {"schema": "qtool.plan", "schema_version": "1.0", "bits": "4",
//    "layers": [{"weight": "conv2.weight", "node": "conv2", "op_type": "Conv",
//                "format": "int4_b32", "reason": ""}, ...]}
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "qtool/quant/lowbit.h"

namespace qtool::quant {

/// The plan a weight-only run carried out (report.layers in order), as JSON.
nlohmann::json plan_to_json(const WeightOnlyReport& report, const std::string& bits);
/// Parses a plan; `what` names it in errors. Throws kConfig naming the file, the layer and the
/// format for an unknown schema, a missing field, a duplicate weight or an unknown format.
LayerPlanMap plan_from_json(const nlohmann::json& j, const std::string& what);
/// Reads a plan file (plan_from_json). Throws kIo / kConfig naming the file.
LayerPlanMap load_plan(const std::string& path);
/// The default bits a plan file was written with (its "bits"), for --plan without --bits.
std::string plan_default_bits(const std::string& path);

}  // namespace qtool::quant
