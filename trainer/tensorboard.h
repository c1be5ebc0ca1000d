// TensorBoard event files (`train.tensorboard`), so `tensorboard --logdir runs/` shows a run as
// it shows Megatron's and DeepSpeed's. A file is a sequence of TFRecords
//   uint64 length | uint32 masked CRC32C(length) | Event proto | uint32 masked CRC32C(Event)
// (little-endian; mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8), the first Event holding
// file_version "brain.Event:2", each later one a Summary of scalar values at one step.
// protobuf-c encodes the Events (trainer/tensorboard_event.proto, compiled by protoc-c at build
// time), ISA-L computes CRC32C.
#pragma once
#include <cstdint>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace kiln {

struct TrainConfig;

class TensorBoardWriter {
 public:
  // Creates `dir` and a new events.out.tfevents.<unix time>.<host>.<pid> file in it. A run
  // resumed after step `resumed_from` > 0 starts its file with a SessionLog START at the next
  // step: TensorBoard then drops what earlier files logged from that step on (the steps a killed
  // run trained past its checkpoint), as metrics.jsonl is cut back on resume.
  explicit TensorBoardWriter(const std::string& dir, int64_t resumed_from = 0);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // Every number of a metrics.jsonl row but "step" as a scalar at row["step"], tagged with its
  // key ("loss", "lr", "grad_norm", "eval_loss", ...); a nested object's numbers as
  // "key/name" ("source_tokens/en.jsonl"). Written and flushed at once.
  void add_row(const nlohmann::ordered_json& row);
  void add_row(const nlohmann::json& row);
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& data);

  std::string path_;
  std::FILE* file_ = nullptr;
};

// The writer train.tensorboard asks for on this rank: auto = RUN_DIR/tb, none = nullptr, else
// that directory. Only rank 0 writes (rank0 false gives nullptr). Without protobuf-c and ISA-L
// in the build, auto logs that and gives nullptr, and a DIR is a UserError.
std::unique_ptr<TensorBoardWriter> open_tensorboard(const TrainConfig& train, bool rank0,
                                                    int64_t resumed_from);

// Whether this build writes event files (protobuf and ISA-L were found).
bool tensorboard_supported();

// The record framing, for tests (built without TensorBoard they throw InternalError): CRC32C (Castagnoli)
// masked as TFRecord does, and one record.
uint32_t crc32c(const void* data, size_t n);
uint32_t masked_crc32c(const void* data, size_t n);
std::string tf_record(const std::string& data);

}  // namespace kiln
