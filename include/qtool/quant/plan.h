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
//
// A static (--bits 8) plan (schema_version 1.1) lists every activation the emitter quantized with its
// precision ("uint8", "int8", "uint16", "int16"), and those kept in float ("float") with why (the
// guard's sensitivity search, --plan); the run's activation type is the one every quantized entry
// shares (mixed types per tensor are not written yet, and are refused):
//   {"schema": "qtool.plan", "schema_version": "1.1", "bits": "8", "path": "static",
//    "activations": [{"tensor": "conv1_out", "precision": "uint16", "reason": "quality floor"},
//                    {"tensor": "mask", "precision": "float", "reason": "guard: ..."}, ...]}
// Reading it back calibrates and emits with that type and those float tensors, without the guard's
// search or the floor's escalation (the floor still gates), giving the same model byte for byte.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

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
/// A static (--bits 8) plan: the activation type, the tensors raised to its 16-bit twin, the
/// tensors quantized over their observed min/max instead of the method's range, and the tensors
/// kept in float (name -> reason).
struct StaticPlan {
  DataType activation_type = DataType::kUint8;
  std::set<std::string> wide_tensors;
  std::set<std::string> observed_range;
  std::map<std::string, std::string> float_tensors;
};
/// The static plan a run carried out: `quantized` activations (each with `reason`) at the plan's
/// type or its 16-bit twin ("range": "observed" where so), then the float ones.
nlohmann::json static_plan_to_json(const std::vector<std::string>& quantized, const StaticPlan& plan,
                                   const std::string& reason);
/// Reads a static plan. Throws kConfig naming the file and the tensor for an unknown precision or
/// a mix of activation types other than an 8-bit type and its 16-bit twin.
StaticPlan load_static_plan(const std::string& path);

/// The default bits a plan file was written with (its "bits"), for --plan without --bits.
std::string plan_default_bits(const std::string& path);

}  // namespace qtool::quant
