// The LoRA+ and DoRA config keys: defaults, values, PEFT's spellings suggested, ranges checked,
// and the resolved config keeping them.
#include <gtest/gtest.h>

#include <string>

#include "trainer/config.h"
#include "base/error.h"

namespace kiln {
namespace {

std::string error_of(const std::string& yaml) {
  try {
    parse_config(yaml, "cfg.yaml");
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

TEST(ConfigLora, LrRatioAndDoraKeys) {
  Config d = parse_config("", "cfg.yaml");
  EXPECT_DOUBLE_EQ(d.lora.lr_ratio, 1.0);
  EXPECT_FALSE(d.lora.dora);
  Config c = parse_config("lora:\n  rank: 8\n  lr_ratio: 16\n  dora: true\n", "cfg.yaml");
  EXPECT_DOUBLE_EQ(c.lora.lr_ratio, 16.0);
  EXPECT_TRUE(c.lora.dora);
  Config back = parse_config(to_yaml(c), "resolved.yaml");
  EXPECT_DOUBLE_EQ(back.lora.lr_ratio, 16.0);
  EXPECT_TRUE(back.lora.dora);

  std::string e = error_of("lora:\n  use_dora: true\n");
  EXPECT_NE(e.find("cfg.yaml:2: lora.use_dora: unknown key; did you mean 'lora.dora'?"), std::string::npos)
      << e;
  e = error_of("lora:\n  loraplus_lr_ratio: 16\n");
  EXPECT_NE(e.find("did you mean 'lora.lr_ratio'"), std::string::npos) << e;
  e = error_of("lora:\n  use_rslora: true\n");
  EXPECT_NE(e.find("did you mean 'lora.rslora'"), std::string::npos) << e;
  e = error_of("lora:\n  lr_ratio: 0\n");
  EXPECT_NE(e.find("lora.lr_ratio: 0 is out of range; valid: > 0"), std::string::npos) << e;
  EXPECT_NE(describe_keys().find("lora.lr_ratio"), std::string::npos);
}

// lora.init_from takes peft:DIR only, with DIR resolved from the config file's directory.
TEST(ConfigLora, InitFromIsAPeftDirectoryResolvedFromTheConfig) {
  Config c = parse_config("lora:\n  rank: 4\n  init_from: peft:adapter\n", "/cfgs/run.yaml");
  EXPECT_EQ(c.lora.init_from, "peft:/cfgs/adapter");
  std::string e = error_of("lora:\n  rank: 4\n  init_from: hf:adapter\n");
  EXPECT_NE(e.find("cfg.yaml:3: lora.init_from: 'hf:adapter' must be none or one of peft:DIR"), std::string::npos)
      << e;
}

}  // namespace
}  // namespace kiln
