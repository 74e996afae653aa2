"""Le-DETR sizes against the paper's Table 4: parameters and GFLOPs at 640 per scale and decoder depth.

Ours: ``count_params`` (inference parameters: decoder layers past the depth and training-only
embeddings left out) and ``count_gflops`` (2 x MACs of convs, linears and BatchNorms, as thop
counts; attention matrix products and grid sampling are not counted). The paper measured with
calculate-flops.pytorch. Run from the repository root:

    python benchmarks/ledetr_table4.py
"""

from __future__ import annotations

# (params M, GFLOPs) per scale and inference decoder depth: Table 4 of arXiv 2602.21010v1
TABLE4 = {
    "m": {4: (31.4, 114.1), 5: (32.7, 115.0), 6: (34.0, 115.6)},
    "l": {4: (38.8, 122.6), 5: (40.1, 123.5), 6: (41.5, 124.3)},
    "x": {4: (42.3, 195.2), 5: (43.6, 196.0), 6: (44.9, 196.9)},
}


def main() -> int:
    from leyolo.models.flops import count_gflops, count_params
    from leyolo.models.registry import create_model

    print("| model | decoder layers | params (M) ours | paper | diff | GFLOPs@640 ours | paper | diff |")
    print("|---|---|---|---|---|---|---|---|")
    for scale, rows in TABLE4.items():
        model = create_model(f"le-detr-{scale}", nc=80)
        default = model.decoder.eval_layers
        for layers, (params, gflops) in rows.items():
            model.set_eval_layers(layers)
            p, g = count_params(model) / 1e6, count_gflops(model, 640)
            mark = " (default)" if layers == default else ""
            print(f"| le-detr-{scale} | {layers}{mark} | {p:.2f} | {params} | {100 * (p / params - 1):+.1f}% "
                  f"| {g:.1f} | {gflops} | {100 * (g / gflops - 1):+.1f}% |", flush=True)
    for scale in ("n", "n-ly"):  # ours, not in the paper
        model = create_model(f"le-detr-{scale}", nc=80)
        print(f"| le-detr-{scale} (ours) | {model.decoder.eval_layers} | {count_params(model) / 1e6:.2f} | - | - "
              f"| {count_gflops(model, 640):.2f} (at 320: {count_gflops(model, 320):.2f}) | - | - |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
