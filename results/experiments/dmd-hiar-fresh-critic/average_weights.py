"""Uniform average of several models' weights (one config): python average_weights.py OUT IN1 IN2 ... (metadata of IN1)."""
import sys
import torch
from safetensors import safe_open
from safetensors.torch import save_file

out, paths = sys.argv[1], sys.argv[2:]
acc, meta = None, None
for p in paths:
    with safe_open(p, "pt") as f:
        sd = {k: f.get_tensor(k).double() for k in f.keys()}
        meta = meta or f.metadata()
    acc = sd if acc is None else {k: acc[k] + sd[k] for k in acc}
save_file({k: (v / len(paths)).float().contiguous() for k, v in acc.items()}, out, metadata=dict(meta, averaged=",".join(paths)))
print(out)
