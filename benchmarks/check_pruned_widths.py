"""Which conv widths channel pruning changed, and whether each is a multiple of 8 (``--round-to``).

    python benchmarks/check_pruned_widths.py ORIGINAL.safetensors PRUNED.safetensors
"""

from __future__ import annotations

import sys

from torch import nn


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    import leyolo

    original = dict(leyolo.load(sys.argv[1]).model.named_modules())
    changed, off = 0, []
    for name, conv in leyolo.load(sys.argv[2]).model.named_modules():
        if not isinstance(conv, nn.Conv2d) or name not in original:
            continue
        before = original[name]
        for side, a, b in (("out", before.out_channels, conv.out_channels), ("in", before.in_channels, conv.in_channels)):
            if a != b:
                changed += 1
                if b % 8:
                    off.append(f"{name}.{side} {a}->{b}")
    print(f"{changed} conv widths changed; not a multiple of 8: {', '.join(off) or 'none'}")
    return 1 if off else 0


if __name__ == "__main__":
    sys.exit(main())
