#include "qtool/quant/plan.h"

#include "qtool/core/error.h"
#include "qtool/core/npy.h"

namespace qtool::quant {

nlohmann::json plan_to_json(const WeightOnlyReport& report, const std::string& bits) {
  nlohmann::ordered_json j;
  j["schema"] = "qtool.plan";
  j["schema_version"] = "1.0";
  j["bits"] = bits;
  j["layers"] = nlohmann::ordered_json::array();
  for (const WeightOnlyLayer& l : report.layers) {
    nlohmann::ordered_json e;
    e["weight"] = l.weight;
    e["node"] = l.node;
    e["op_type"] = l.op_type;
    e["format"] = l.format;
    e["reason"] = l.note;
    j["layers"].push_back(std::move(e));
  }
  return nlohmann::json(j);
}

LayerPlanMap plan_from_json(const nlohmann::json& j, const std::string& what) {
  auto bad = [&](const std::string& why) -> void { fail(ErrorCode::kConfig, "plan '{}': {}", what, why); };
  if (!j.is_object() || j.value("schema", "") != "qtool.plan") bad("not a qtool plan (\"schema\": \"qtool.plan\")");
  const std::string version = j.value("schema_version", "");
  if (version.rfind("1.", 0) != 0) bad(fmt::format("schema_version '{}' is not 1.x", version));
  if (j.value("path", "") == "static") bad("a static (--bits 8) plan: give it with --bits 8");
  if (!j.contains("layers") || !j["layers"].is_array()) bad("no \"layers\" array");
  LayerPlanMap plan;
  for (size_t i = 0; i < j["layers"].size(); ++i) {
    const auto& e = j["layers"][i];
    if (!e.is_object() || !e.contains("weight") || !e["weight"].is_string() || !e.contains("format") ||
        !e["format"].is_string())
      bad(fmt::format("layer {} needs string fields \"weight\" and \"format\"", i));
    const std::string weight = e["weight"].get<std::string>();
    const std::string format = e["format"].get<std::string>();
    PlannedLayer p;
    if (format != "float") {
      p.format = find_weight_format(format);
      if (!p.format)
        bad(fmt::format("layer '{}': unknown format '{}' (see qtool quantize --help for the formats)", weight, format));
    }
    const std::string reason = e.contains("reason") && e["reason"].is_string() ? e["reason"].get<std::string>() : "";
    p.reason = reason.empty() || reason.rfind("--plan", 0) == 0 ? "--plan" : "--plan (was: " + reason + ")";
    if (!plan.emplace(weight, std::move(p)).second) bad(fmt::format("weight '{}' is listed twice", weight));
  }
  return plan;
}

namespace {
nlohmann::json read_plan_json(const std::string& path) {
  const std::string text = read_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(ErrorCode::kConfig, "plan '{}' is not valid JSON: {}", path, e.what());
  }
}
}  // namespace

LayerPlanMap load_plan(const std::string& path) { return plan_from_json(read_plan_json(path), path); }

namespace {
DataType twin16(DataType t) { return t == DataType::kInt8 ? DataType::kInt16 : DataType::kUint16; }
}  // namespace

nlohmann::json static_plan_to_json(const std::vector<std::string>& quantized, const StaticPlan& plan,
                                   const std::string& reason) {
  nlohmann::ordered_json j;
  j["schema"] = "qtool.plan";
  j["schema_version"] = "1.2";
  j["bits"] = "8";
  j["path"] = "static";
  j["activations"] = nlohmann::ordered_json::array();
  for (const std::string& t : quantized) {
    const bool wide = plan.wide_tensors.count(t) != 0;
    nlohmann::ordered_json e = {{"tensor", t},
                                {"precision", std::string(dtype_name(wide ? twin16(plan.activation_type) : plan.activation_type))},
                                {"reason", wide ? "guard: 8 bits lose too much here" : reason}};
    if (plan.observed_range.count(t)) e["range"] = "observed";
    j["activations"].push_back(std::move(e));
  }
  for (const auto& entry : plan.float_tensors)
    j["activations"].push_back({{"tensor", entry.first}, {"precision", "float"}, {"reason", entry.second}});
  return nlohmann::json(j);
}

StaticPlan load_static_plan(const std::string& path) {
  const nlohmann::json j = read_plan_json(path);
  auto bad = [&](const std::string& why) -> void { fail(ErrorCode::kConfig, "plan '{}': {}", path, why); };
  if (!j.is_object() || j.value("schema", "") != "qtool.plan" || j.value("path", "") != "static")
    bad("not a static qtool plan (\"schema\": \"qtool.plan\", \"path\": \"static\")");
  if (!j.contains("activations") || !j["activations"].is_array()) bad("no \"activations\" array");
  StaticPlan plan;
  std::map<std::string, std::string> typed;  // tensor -> precision
  std::set<std::string> types;
  for (size_t i = 0; i < j["activations"].size(); ++i) {
    const auto& e = j["activations"][i];
    if (!e.is_object() || !e.contains("tensor") || !e["tensor"].is_string() || !e.contains("precision") ||
        !e["precision"].is_string())
      bad(fmt::format("activation {} needs string fields \"tensor\" and \"precision\"", i));
    const std::string tensor = e["tensor"].get<std::string>(), precision = e["precision"].get<std::string>();
    if (precision == "float") {
      const std::string reason = e.value("reason", "");
      plan.float_tensors[tensor] = reason.rfind("--plan", 0) == 0 || reason.empty() ? "--plan" : "--plan (was: " + reason + ")";
      continue;
    }
    if (precision != "uint8" && precision != "int8" && precision != "uint16" && precision != "int16")
      bad(fmt::format("tensor '{}': precision '{}' is not uint8, int8, uint16, int16 or float", tensor, precision));
    const std::string range = e.value("range", "method");
    if (range != "method" && range != "observed")
      bad(fmt::format("tensor '{}': range '{}' is not \"method\" or \"observed\"", tensor, range));
    if (range == "observed") plan.observed_range.insert(tensor);
    typed[tensor] = precision;
    types.insert(precision);
  }
  auto type_of = [](const std::string& t) {
    return t == "int8" ? DataType::kInt8 : t == "uint16" ? DataType::kUint16 : t == "int16" ? DataType::kInt16 : DataType::kUint8;
  };
  if (types.size() == 2) {  // an 8-bit type and its 16-bit twin: the 16-bit tensors are raised ones
    const DataType a = type_of(*types.begin()), b = type_of(*types.rbegin());
    const DataType narrow = dtype_bits(a) == 8 ? a : b, wide = dtype_bits(a) == 8 ? b : a;
    if (dtype_bits(narrow) != 8 || twin16(narrow) != wide)
      bad(fmt::format("activations of types {} and {}: a plan mixes only an 8-bit type with its 16-bit twin "
                      "(uint8 with uint16, int8 with int16)", *types.begin(), *types.rbegin()));
    plan.activation_type = narrow;
    for (const auto& [tensor, precision] : typed)
      if (type_of(precision) == wide) plan.wide_tensors.insert(tensor);
  } else if (types.size() > 2) {
    bad("more than two activation types: a plan mixes only an 8-bit type with its 16-bit twin");
  } else {
    plan.activation_type = types.empty() ? DataType::kUint8 : type_of(*types.begin());
  }
  return plan;
}

std::string plan_default_bits(const std::string& path) {
  const nlohmann::json j = read_plan_json(path);
  QTOOL_CHECK(j.is_object() && j.contains("bits") && j["bits"].is_string(), ErrorCode::kConfig,
              "plan '{}' has no \"bits\": give --bits", path);
  return j["bits"].get<std::string>();
}

}  // namespace qtool::quant
