"""Run ONNX embedder models over chips saved as ``.npy``: ``onnx_run.py CHIPS (MODEL OUT)...``.

Plain numpy + onnxruntime, so it runs under ``qemu-x86_64 -cpu Haswell-v4`` to see what an
AVX2-only CPU (no AVX-512, no VNNI) computes; ``benchmarks/runtime.py --avx2`` and the INT8
test in ``tests/models`` use it.
"""

import sys

import numpy as np
import onnxruntime as ort

chips = np.load(sys.argv[1]).astype(np.float32)
for path, out in zip(sys.argv[2::2], sys.argv[3::2], strict=True):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    batches = [session.run(None, {"chips": chips[i : i + 32]})[0] for i in range(0, len(chips), 32)]
    np.save(out, np.concatenate(batches))
