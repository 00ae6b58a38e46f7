// Plan files (quant/plan.h): JSON round trip and the errors a bad plan gets.
#include "qtool/quant/plan.h"

#include <gtest/gtest.h>

namespace qtool::quant {
namespace {

WeightOnlyReport two_layer_report() {
  WeightOnlyReport r;
  WeightOnlyLayer a;
  a.weight = "w1";
  a.node = "conv1";
  a.op_type = "Conv";
  a.format = "int8";
  a.note = "first/last layer";
  WeightOnlyLayer b = a;
  b.weight = "w2";
  b.node = "fc";
  b.format = "uint4_b32";
  b.note = "";
  WeightOnlyLayer c = a;
  c.weight = "w3";
  c.format = "float";
  c.note = "excluded";
  r.layers = {a, b, c};
  return r;
}

TEST(Plan, RoundTripsEveryLayerFormat) {
  const nlohmann::json j = plan_to_json(two_layer_report(), "4");
  EXPECT_EQ(j["bits"], "4");
  EXPECT_EQ(j["schema"], "qtool.plan");
  const LayerPlanMap plan = plan_from_json(j, "p.json");
  ASSERT_EQ(plan.size(), 3u);
  EXPECT_EQ(plan.at("w1").format, find_weight_format("int8"));
  EXPECT_EQ(plan.at("w2").format, find_weight_format("uint4_b32"));
  EXPECT_EQ(plan.at("w3").format, nullptr);  // float
  EXPECT_EQ(plan.at("w1").reason, "--plan (was: first/last layer)");
  EXPECT_EQ(plan.at("w2").reason, "--plan");
}

TEST(Plan, BadPlansNameTheFileAndTheLayer) {
  nlohmann::json j = plan_to_json(two_layer_report(), "4");
  j["layers"][1]["format"] = "int3_b32";
  try {
    plan_from_json(j, "p.json");
    FAIL() << "accepted an unknown format";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kConfig);
    EXPECT_NE(std::string(e.what()).find("p.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("w2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("int3_b32"), std::string::npos) << e.what();
  }
  nlohmann::json dup = plan_to_json(two_layer_report(), "4");
  dup["layers"][2]["weight"] = "w1";
  EXPECT_THROW(plan_from_json(dup, "p.json"), Error);
  EXPECT_THROW(plan_from_json(nlohmann::json::object(), "p.json"), Error);
  nlohmann::json v2 = plan_to_json(two_layer_report(), "4");
  v2["schema_version"] = "2.0";
  EXPECT_THROW(plan_from_json(v2, "p.json"), Error);
}

}  // namespace
}  // namespace qtool::quant
