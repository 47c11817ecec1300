#!/usr/bin/env python3
"""Print what Python onnxruntime computes for one float row, as JSON:
{"<output name>": [flattened values], ...}. Tests compare Ferry against it.

    python reference_predict.py model.onnx 5.1 3.5 1.4 0.2
"""
import json
import sys

import numpy as np
import onnxruntime as ort


def main() -> None:
    path, row = sys.argv[1], [float(v) for v in sys.argv[2:]]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    outs = sess.run(None, {name: np.array([row], dtype=np.float32)})
    print(json.dumps({o.name: np.asarray(v).ravel().tolist() for o, v in zip(sess.get_outputs(), outs)}))


if __name__ == "__main__":
    main()
