"""Measured GPU times beside the model's predictions, shape by shape.

Reads the CSV that benchmarks/bench.py writes on a GPU and the predictions
that benchmarks/gpu_model.py wrote (benchmarks/gpu_predictions.json), and
prints, per preset shape and mode, the measured time of iwae_fused, the
predicted time for the GPU the measurement ran on (matched by name: H100,
H200 or B200), their ratio, and measured / predicted fractions of peak
HBM bandwidth. scripts/gpu_check.sh runs it after the benchmark.

    python benchmarks/gpu_check.py --measured runs/bench.csv --device "NVIDIA H200"
"""

import argparse
import csv
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_gpu(device_name, predicted):
    names = {n for row in predicted for n in row["gpus"]}
    for key, name in (("H200", "H200"), ("H100", "H100 SXM"), ("B200", "B200")):
        if key in device_name and name in names:
            return name
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--measured", required=True, help="bench.py --csv output")
    ap.add_argument("--predicted", default=os.path.join(ROOT, "benchmarks", "gpu_predictions.json"))
    ap.add_argument("--device", required=True, help="torch.cuda.get_device_name()")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    with open(args.predicted) as f:
        predicted = json.load(f)
    gpu = model_gpu(args.device, predicted)
    if gpu is None:
        print(f"no predictions for {args.device}: the model covers "
              f"{sorted({n for r in predicted for n in r['gpus']})}; measured times only")
    pred = {(tuple(r["shape"]), r["dim"], r["op"]): r for r in predicted
            if r["dtype"] == args.dtype and not r["label"].startswith("VIMCO")}
    print(f"{'shape':>22} {'dim':>3} {'mode':>7} {'measured us':>12} {'predicted us':>13} "
          f"{'meas/pred':>9} {'% peak meas':>11} {'% peak pred':>11}  limiter (model)")
    ratios = []
    with open(args.measured) as f:
        for row in csv.DictReader(f):
            shape = tuple(int(s) for s in row["shape"].split("x"))
            key = (shape, int(row["dim"]), row["mode"])
            meas = float(row["iwae_fused_us"])
            p = pred.get(key)
            if not p or gpu is None:
                print(f"{row['shape']:>22} {row['dim']:>3} {row['mode']:>7} {meas:12.1f}")
                continue
            g = p["gpus"][gpu]
            t = g["time"] * 1e6
            peak = g["frac_peak"] * g["time"] * 1e6 / meas  # the same bytes in the measured time
            ratios.append(meas / t)
            print(f"{row['shape']:>22} {row['dim']:>3} {row['mode']:>7} {meas:12.1f} {t:13.1f} "
                  f"{meas / t:9.2f} {100 * peak:10.0f}% {100 * g['frac_peak']:10.0f}%  {g['limiter']}")
    if ratios:
        gm = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        print(f"\n{gpu}: measured / predicted over {len(ratios)} rows: geometric mean {gm:.2f}, "
              f"range {min(ratios):.2f} to {max(ratios):.2f}")


if __name__ == "__main__":
    sys.exit(main())
