"""Area attention vs global attention in YOLOv12: the latency claim of the paper's Table 3, measured here.

Builds a YOLOv12 model (untrained weights: speed only), copies it, and switches every area
attention layer of the copy to global attention (``area = 1``): same weights, same FLOPs outside
attention, only the attention pattern differs. Both run through eager PyTorch and onnxruntime,
interleaved, several passes, fastest median kept (the VM's speed drifts between minutes).

    python benchmarks/bench_area_attention.py [--model yolov12-n] [--imgsz 320,640] [--passes 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Callable


def median_ms(fn: Callable[[], object], runs: int, warmup: int) -> float:
    from leyolo.tools.measure import time_calls

    return statistics.median(time_calls(lambda _: fn(), None, runs, warmup)) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="yolov12-n")
    parser.add_argument("--imgsz", default="320,640", help="comma list of square sizes")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default: theirs)")
    args = parser.parse_args()

    import torch

    import leyolo
    from leyolo.deploy.onnx_export import export_onnx
    from leyolo.inference.backends import onnxruntime_session
    from leyolo.models.attention import AreaAttention

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    area = leyolo.create_model(args.model).eval()
    dense = copy.deepcopy(area)
    switched = 0
    for module in dense.modules():
        if isinstance(module, AreaAttention) and module.area > 1:
            module.area, switched = 1, switched + 1
    if not switched:
        print(f"error: {args.model} has no area attention layers", file=sys.stderr)
        return 1
    print(f"{args.model}: {switched} attention layers switched from areas to global attention")
    print("| input | backend | area attention (ms) | global attention (ms) | global / area |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for imgsz in (int(s) for s in args.imgsz.split(",")):
            x = torch.rand(1, 3, imgsz, imgsz)
            calls: dict[tuple[str, str], Callable[[], object]] = {}
            for name, model in (("area", area), ("global", dense)):
                def eager(model: torch.nn.Module = model) -> object:
                    with torch.inference_mode():
                        return model(x)

                session = onnxruntime_session(export_onnx(model, Path(tmp) / f"{name}-{imgsz}.onnx", imgsz),
                                              threads=args.threads)
                feed = {session.get_inputs()[0].name: x.numpy()}
                calls[name, "torch"] = eager
                calls[name, "onnxruntime"] = lambda session=session, feed=feed: session.run(None, feed)
            best = {key: float("inf") for key in calls}
            for _ in range(args.passes):
                for key, fn in calls.items():
                    best[key] = min(best[key], median_ms(fn, args.runs, warmup=3))
            for backend in ("torch", "onnxruntime"):
                a, g = best["area", backend], best["global", backend]
                print(f"| {imgsz} | {backend} | {a:.1f} | {g:.1f} | {g / a:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
