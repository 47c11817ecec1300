#!/usr/bin/env python3
"""Train, register, and promote only if better: the pipeline a training team
copies. Trains a scikit-learn classifier on iris, exports it with skl2onnx,
registers it through Ferry (metrics on the MLflow run), scores it and the
model serving as the champion on the same hold-out set — the champion through
Ferry's inference service, as callers see it — and moves the alias only when
the new model is better.

    pip install -e clients/python   # plus scikit-learn, skl2onnx, onnxruntime
    export FERRY_REGISTRY_TOKEN=...
    python examples/python/train_and_promote.py --name iris --alias champion --c 1.0

Prints one JSON line: the version registered, both accuracies, and whether it was promoted.
"""
import argparse
import json
import sys

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from ferry_client import Ferry, FerryError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--registry", default="127.0.0.1:50051")
    ap.add_argument("--inference", default="127.0.0.1:50052")
    ap.add_argument("--name", default="iris", help="the registered model")
    ap.add_argument("--alias", default="champion", help="the alias callers are served from")
    ap.add_argument("--c", type=float, default=1.0, help="inverse regularisation strength")
    args = ap.parse_args()

    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=7, stratify=y)
    clf = LogisticRegression(C=args.c, max_iter=1000).fit(X_train, y_train)
    onx = to_onnx(clf, initial_types=[("input", FloatTensorType([None, 4]))],
                  options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})

    # The candidate, scored on the exact bytes that will be registered.
    session = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    candidate = float((session.run(["label"], {"input": X_test})[0] == y_test).mean())

    with Ferry(registry=args.registry, inference=args.inference) as ferry:
        version = ferry.register(onx, args.name, metrics={"holdout_accuracy": candidate},
                                 params={"C": str(args.c)}, tags={"trained_by": "train_and_promote.py"})
        champion = ferry.resolve(args.name, alias=args.alias)
        served = None
        if champion is not None and champion.version != version.version:
            # The champion as callers get it: through the inference service.
            p = ferry.predict(args.name, X_test)
            served = float((p["label"] == y_test).mean())
        better = champion is None or (served is not None and candidate > served)
        if better:
            ferry.promote(args.name, version.version, alias=args.alias,
                          reason=f"hold-out accuracy {candidate:.3f} vs {served if served is not None else 'none'}")
        print(json.dumps({"version": version.version, "created": version.created, "candidate_accuracy": candidate,
                          "champion_version": champion.version if champion else None, "champion_accuracy": served,
                          "promoted": better}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FerryError as e:
        sys.exit(f"train_and_promote: {e}")
