// The Python module iwae_fused._cuda_emu: loading it registers the
// iwae_fused_emu ops (ops_emu.cpp); its functions set the emulated device,
// read the launch log and run the emulator's self-test.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/extension.h>

#include "faults.h"
#include "runtime.h"
#include "selftest.h"

namespace py = pybind11;

namespace {

py::dict record(const iwae_emu::LaunchRecord& r) {
  py::dict d;
  d["kernel"] = r.kernel;
  d["grid"] = py::make_tuple(r.grid[0], r.grid[1], r.grid[2]);
  d["block"] = py::make_tuple(r.block[0], r.block[1], r.block[2]);
  d["shared_bytes"] = r.shared_bytes;
  d["threads"] = r.threads;
  d["warps"] = r.warps;
  d["load_requests"] = r.load_requests;
  d["store_requests"] = r.store_requests;
  d["load_bytes"] = r.load_bytes;
  d["store_bytes"] = r.store_bytes;
  d["load_sectors"] = r.load_sectors;
  d["store_sectors"] = r.store_sectors;
  d["load_ideal_sectors"] = r.load_ideal_sectors;
  d["load_distinct_sectors"] = r.load_distinct_sectors;
  d["store_distinct_sectors"] = r.store_distinct_sectors;
  d["store_ideal_sectors"] = r.store_ideal_sectors;
  d["lane_slots"] = r.lane_slots;
  d["active_lanes"] = r.active_lanes;
  d["shuffles"] = r.shuffles;
  d["syncwarps"] = r.syncwarps;
  d["barriers"] = r.barriers;
  d["exps"] = r.exps;
  d["logs"] = r.logs;
  d["warp_op_slots"] = r.warp_op_slots;
  d["warp_ops"] = r.warp_ops;
  d["block_op_slots"] = r.block_op_slots;
  d["block_ops"] = r.block_ops;
  d["shared_load_requests"] = r.shared_load_requests;
  d["shared_store_requests"] = r.shared_store_requests;
  d["shared_wavefronts"] = r.shared_wavefronts;
  d["shared_ideal_wavefronts"] = r.shared_ideal_wavefronts;
  d["int_args"] = r.int_args;
  d["block_order"] = r.block_order;
  d["first_blocks"] = r.first_blocks;
  return d;
}

}  // namespace

PYBIND11_MODULE(_cuda_emu, m) {
  m.doc() = "The CUDA kernels executed on the CPU (ops under torch.ops.iwae_fused_emu)";
  m.def("device", [] {
    const auto& d = iwae_emu::device();
    py::dict r;
    r["name"] = d.name;
    r["sm_count"] = d.sm_count;
    r["max_grid_x"] = d.max_grid[0];
    r["max_grid_y"] = d.max_grid[1];
    r["max_grid_z"] = d.max_grid[2];
    r["shared_per_block"] = d.shared_per_block;
    return r;
  });
  m.def(
      "set_device",
      [](const std::string& name, int sm_count, int64_t max_grid_x, int64_t max_grid_y,
         int64_t max_grid_z, int64_t shared_per_block) {
        TORCH_CHECK(sm_count >= 1 && max_grid_x >= 1 && max_grid_y >= 1 && max_grid_z >= 1 &&
                        max_grid_x <= 2147483647 && shared_per_block >= 0,
                    "CUDA emulator: device limits must be positive (grid.x at most 2^31 - 1)");
        auto& d = iwae_emu::device();
        d.name = name, d.sm_count = sm_count;
        d.max_grid[0] = max_grid_x, d.max_grid[1] = max_grid_y, d.max_grid[2] = max_grid_z;
        d.shared_per_block = shared_per_block;
      },
      py::arg("name"), py::arg("sm_count"), py::arg("max_grid_x"), py::arg("max_grid_y"),
      py::arg("max_grid_z"), py::arg("shared_per_block"));
  m.def(
      "set_block_order",
      [](const std::string& order, uint64_t seed) {
        auto& s = iwae_emu::schedule();
        if (order == "xyz") {
          s.order = iwae_emu::BlockOrder::Xyz;
        } else if (order == "reversed") {
          s.order = iwae_emu::BlockOrder::Reversed;
        } else if (order == "shuffled") {
          s.order = iwae_emu::BlockOrder::Shuffled;
        } else {
          TORCH_CHECK(false, "CUDA emulator: block_order must be 'xyz', 'reversed' or 'shuffled', "
                      "but got '", order, "'");
        }
        s.seed = seed;
        s.launches = 0;
      },
      py::arg("order"), py::arg("seed") = 0);
  m.def("block_order", [] {
    const auto& s = iwae_emu::schedule();
    const char* names[] = {"xyz", "reversed", "shuffled"};
    return py::make_tuple(names[static_cast<int>(s.order)], s.seed);
  });
  m.def("instantiations", [] { return iwae_emu::instantiations(); });
  m.def("launch_counts", [] { return iwae_emu::launch_counts(); });
  m.def("plant_fault", &iwae_emu::plant_fault, py::arg("name"));
  m.def("fault_names", &iwae_emu::fault_names);
  m.def("launches", [] {
    py::list l;
    for (const auto& r : iwae_emu::launch_log()) l.append(record(r));
    return l;
  });
  m.def("clear_launches", [] { iwae_emu::launch_log().clear(); });
  m.def("set_count_requests", [](bool on) { iwae_emu::count_requests = on; });
  m.def("set_plan_only", [](bool on) { iwae_emu::plan_only = on; });
  m.def("resident_blocks", [] { return iwae_emu::device().resident_blocks; });
  m.def("set_resident_blocks", [](const std::map<std::string, int>& blocks) {
    for (const auto& [name, n] : blocks) {
      TORCH_CHECK(n >= 1, "CUDA emulator: resident blocks of ", name, " must be at least 1, got ", n);
    }
    iwae_emu::device().resident_blocks = blocks;
  });
  m.def("selftest_cases", &iwae_emu::selftest::cases);
  m.def("selftest", &iwae_emu::selftest::run_case, py::arg("name"), py::arg("broken"));
}
