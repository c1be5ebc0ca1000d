// TensorBoard event-file writer (see tensorboard.h).
#include "trainer/tensorboard.h"

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>

#include "base/error.h"
#include "base/log.h"
#include "trainer/config.h"

#ifdef KILN_WITH_TENSORBOARD
#include <isa-l/crc.h>

#include <vector>

#include "tensorboard_event.pb-c.h"  // generated into the build dir from trainer/tensorboard_event.proto
#endif

namespace fs = std::filesystem;

namespace kiln {

#ifdef KILN_WITH_TENSORBOARD

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// Event protos through protobuf-c (the C runtime: the C++ one would clash with the copy of
// protobuf that Debian's libsentencepiece carries inside it).
std::string pack(const Kiln__Tb__Event& event) {
  std::string out(kiln__tb__event__get_packed_size(&event), '\0');
  kiln__tb__event__pack(&event, reinterpret_cast<uint8_t*>(out.data()));
  return out;
}

template <typename Json>
std::string summary_event(const Json& row) {
  std::vector<std::string> tags;  // [value] kept alive until packed
  std::vector<float> values;
  for (const auto& [key, v] : row.items()) {
    if (key == "step") continue;
    if (v.is_number()) {
      tags.push_back(key);
      values.push_back(static_cast<float>(v.template get<double>()));
    } else if (v.is_object()) {
      for (const auto& [name, x] : v.items()) {
        if (!x.is_number()) continue;
        tags.push_back(key + "/" + name);
        values.push_back(static_cast<float>(x.template get<double>()));
      }
    }
  }
  std::vector<Kiln__Tb__SummaryValue> items(tags.size());
  std::vector<Kiln__Tb__SummaryValue*> ptrs(tags.size());
  for (size_t i = 0; i < tags.size(); ++i) {
    kiln__tb__summary_value__init(&items[i]);
    items[i].tag = tags[i].data();
    items[i].value_case = KILN__TB__SUMMARY_VALUE__VALUE_SIMPLE_VALUE;
    items[i].simple_value = values[i];
    ptrs[i] = &items[i];
  }
  Kiln__Tb__Summary summary;
  kiln__tb__summary__init(&summary);
  summary.n_value = ptrs.size();
  summary.value = ptrs.data();
  Kiln__Tb__Event event;
  kiln__tb__event__init(&event);
  event.wall_time = now_seconds();
  event.step = row.at("step").template get<int64_t>();
  event.what_case = KILN__TB__EVENT__WHAT_SUMMARY;
  event.summary = &summary;
  return pack(event);
}

}  // namespace

bool tensorboard_supported() { return true; }

uint32_t crc32c(const void* data, size_t n) {
  // ISA-L's crc32_iscsi is CRC32C without the final inversion; the standard form starts from
  // and ends with all ones (crc32c("123456789") == 0xe3069283).
  return crc32_iscsi(static_cast<unsigned char*>(const_cast<void*>(data)), static_cast<int>(n), 0xffffffffu) ^
         0xffffffffu;
}

uint32_t masked_crc32c(const void* data, size_t n) {
  const uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string tf_record(const std::string& data) {
  std::string out, len;
  put_le(len, data.size(), 8);
  out += len;
  put_le(out, masked_crc32c(len.data(), len.size()), 4);
  out += data;
  put_le(out, masked_crc32c(data.data(), data.size()), 4);
  return out;
}

TensorBoardWriter::TensorBoardWriter(const std::string& dir, int64_t resumed_from) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) user_error("train.tensorboard: cannot create ", dir, " (", ec.message(), ")");
  char host[256] = "localhost";
  ::gethostname(host, sizeof(host) - 1);
  path_ = (fs::path(dir) /
           str("events.out.tfevents.", static_cast<int64_t>(now_seconds()), ".", host, ".", ::getpid()))
              .string();
  file_ = std::fopen(path_.c_str(), "wb");
  if (!file_) user_error("train.tensorboard: cannot create ", path_, " (", std::strerror(errno), ")");
  Kiln__Tb__Event first;
  kiln__tb__event__init(&first);
  first.wall_time = now_seconds();
  std::string version = "brain.Event:2";
  first.what_case = KILN__TB__EVENT__WHAT_FILE_VERSION;
  first.file_version = version.data();
  write_record(pack(first));
  if (resumed_from > 0) {
    Kiln__Tb__SessionLog log;
    kiln__tb__session_log__init(&log);
    log.status = KILN__TB__SESSION_LOG__STATUS__START;
    Kiln__Tb__Event start;
    kiln__tb__event__init(&start);
    start.wall_time = now_seconds();
    start.step = resumed_from + 1;
    start.what_case = KILN__TB__EVENT__WHAT_SESSION_LOG;
    start.session_log = &log;
    write_record(pack(start));
  }
}

TensorBoardWriter::~TensorBoardWriter() {
  if (file_) std::fclose(file_);
}

void TensorBoardWriter::write_record(const std::string& data) {
  const std::string rec = tf_record(data);
  if (std::fwrite(rec.data(), 1, rec.size(), file_) != rec.size() || std::fflush(file_) != 0)
    user_error(path_, ": cannot write TensorBoard events (", std::strerror(errno), ")");
}

void TensorBoardWriter::add_row(const nlohmann::ordered_json& row) { write_record(summary_event(row)); }
void TensorBoardWriter::add_row(const nlohmann::json& row) { write_record(summary_event(row)); }

std::unique_ptr<TensorBoardWriter> open_tensorboard(const TrainConfig& train, bool rank0,
                                                    int64_t resumed_from) {
  if (!rank0 || train.tensorboard == "none") return nullptr;
  const std::string dir =
      train.tensorboard == "auto" ? (fs::path(train.run_dir) / "tb").string() : train.tensorboard;
  auto w = std::make_unique<TensorBoardWriter>(dir, resumed_from);
  log0("tensorboard: ", w->path());
  return w;
}

#else  // built without protobuf / ISA-L

bool tensorboard_supported() { return false; }
uint32_t crc32c(const void*, size_t) { throw InternalError("built without TensorBoard"); }
uint32_t masked_crc32c(const void*, size_t) { throw InternalError("built without TensorBoard"); }
std::string tf_record(const std::string&) { throw InternalError("built without TensorBoard"); }

TensorBoardWriter::TensorBoardWriter(const std::string& dir, int64_t) {
  user_error(
      "train.tensorboard: this kiln was built without TensorBoard support (needs protobuf "
      "and ISA-L: scripts/setup.sh installs them); valid: none");
}
TensorBoardWriter::~TensorBoardWriter() = default;
void TensorBoardWriter::write_record(const std::string&) {}
void TensorBoardWriter::add_row(const nlohmann::ordered_json&) {}
void TensorBoardWriter::add_row(const nlohmann::json&) {}

std::unique_ptr<TensorBoardWriter> open_tensorboard(const TrainConfig& train, bool rank0, int64_t) {
  if (!rank0 || train.tensorboard == "none") return nullptr;
  if (train.tensorboard != "auto") return std::make_unique<TensorBoardWriter>(train.tensorboard);
  log0("tensorboard: off (this build has no protobuf / ISA-L; scripts/setup.sh installs them)");
  return nullptr;
}

#endif

}  // namespace kiln
