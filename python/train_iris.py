#!/usr/bin/env python3
"""Train Ferry's sample model: scikit-learn LogisticRegression on the iris data
set (shipped with scikit-learn), converted to ONNX with skl2onnx.

The ONNX model has one input `input` float32 [N, 4] and two outputs: `label`
int64 [N] and `probabilities` float32 [N, 3].

    python train_iris.py --out iris.onnx [--c 1.0]

Different --c values give different coefficients, hence a visibly different
second model version.
"""
import argparse

import numpy as np
import onnx
from onnx import helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="where to write the .onnx file")
    ap.add_argument("--c", type=float, default=1.0, help="inverse regularisation strength")
    args = ap.parse_args()

    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    clf = LogisticRegression(C=args.c, max_iter=1000).fit(X, y)
    model = to_onnx(
        clf,
        initial_types=[("input", FloatTensorType([None, 4]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    model.graph.name = "iris_logreg"
    # skl2onnx may list a domain twice in opset_import; keep one entry per domain.
    seen: dict[str, int] = {}
    for o in model.opset_import:
        seen[o.domain] = max(seen.get(o.domain, 0), o.version)
    del model.opset_import[:]
    for domain, version in seen.items():
        model.opset_import.append(helper.make_opsetid(domain, version))
    onnx.checker.check_model(model)
    onnx.save(model, args.out)
    print(f"wrote {args.out} (C={args.c}, train accuracy {clf.score(X, y):.3f})")


if __name__ == "__main__":
    main()
