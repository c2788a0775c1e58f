"""The least a Python command can do for one cutout: a reference for the cold-start split.

Imports only numpy, ONNX Runtime and Pillow, loads the optimised graph that alphacut saved
(mapped weights, no optimisation), and does what rembg's command does: resize to the model's
input, one inference, the mask resized back with Pillow, a PNG at alphacut's default level.
No settings, no option checks, no edge work. bench/coldstart.py times it beside
`alphacut remove`: the difference between the two is what alphacut's own layers cost.

Usage: bare_ort.py GRAPH PHOTO OUT.png THREADS (alphacut's intra-op thread count)
"""

import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

graph, photo, out, threads = sys.argv[1:5]
options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
options.enable_mem_pattern = False
# The thread settings alphacut's sessions use (models/session.py).
options.intra_op_num_threads = int(threads)
options.inter_op_num_threads = 1
options.add_session_config_entry("session.intra_op.allow_spinning", "0")
session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
source = session.get_inputs()[0]
size = source.shape[-1] if isinstance(source.shape[-1], int) else 1024
image = Image.open(photo).convert("RGB")
pixels = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), np.float32)
tensor = ((pixels - 128.0) / 256.0).transpose(2, 0, 1)[None]
prob = session.run(None, {source.name: tensor})[0][0, 0]
mask = Image.fromarray((np.clip(prob, 0.0, 1.0) * 255.0).astype(np.uint8))
image.putalpha(mask.resize(image.size, Image.Resampling.BILINEAR))
image.save(out, compress_level=1)
sys.stdout.flush()
os._exit(0)  # as `alphacut remove` does: the OS takes the memory back
