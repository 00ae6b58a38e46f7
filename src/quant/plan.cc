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

std::string plan_default_bits(const std::string& path) {
  const nlohmann::json j = read_plan_json(path);
  QTOOL_CHECK(j.is_object() && j.contains("bits") && j["bits"].is_string(), ErrorCode::kConfig,
              "plan '{}' has no \"bits\": give --bits", path);
  return j["bits"].get<std::string>();
}

}  // namespace qtool::quant
