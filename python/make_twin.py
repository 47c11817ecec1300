#!/usr/bin/env python3
"""Write a twin of an ONNX model whose float output is named `output` and
whose input `input` is float [N, K]: the same answers, but either slower
(--spin N: an ONNX Loop of N iterations on every call, about 0.7 us each on a
2-core test machine), failing on some inputs (--fail-above X: ONNX Runtime
refuses any call whose first column exceeds X; -1 fails on the zeros of a
warm-up too), with its input renamed (--rename-input NAME: a signature
change), or larger (--pad-mb N: an unused initializer of N MB). Challengers and faults for the tests.

    python make_twin.py --src mlp.onnx --dst slow.onnx --spin 100000
    python make_twin.py --src mlp.onnx --dst flaky.onnx --fail-above 0.6
"""
import argparse

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper, numpy_helper


def const(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.array(value, dtype), name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", required=True)
    ap.add_argument("--dst", required=True)
    kind = ap.add_mutually_exclusive_group(required=True)
    kind.add_argument("--spin", type=int, help="Loop iterations per call")
    kind.add_argument("--fail-above", type=float, help="fail calls whose input[:, 0] exceeds this")
    kind.add_argument("--rename-input", help="the input's new name")
    kind.add_argument("--pad-mb", type=int, help="the same model, this many MB larger (an unused initializer)")
    args = ap.parse_args()

    m = onnx.load(args.src)
    g = m.graph
    if args.pad_mb:
        g.initializer.append(numpy_helper.from_array(np.zeros(args.pad_mb << 18, np.float32), "padding"))
        onnx.checker.check_model(m)
        onnx.save(m, args.dst)
        return
    if args.rename_input:
        for i in g.input:
            if i.name == "input":
                i.name = args.rename_input
        for n in g.node:
            n.input[:] = [args.rename_input if x == "input" else x for x in n.input]
        onnx.checker.check_model(m)
        onnx.save(m, args.dst)
        return
    for n in g.node:
        n.output[:] = ["raw" if o == "output" else o for o in n.output]
    g.initializer.append(const("zero", 0.0))
    if args.spin is not None:
        # A counter that starts from the input, so that it cannot be folded away at load time.
        g.initializer.extend([const("trips", args.spin, np.int64), const("go", True, np.bool_)])
        body = helper.make_graph(
            [
                helper.make_node("Identity", ["cond"], ["cond_out"]),
                helper.make_node("Constant", [], ["one"], value=const("one_v", 1.0)),
                helper.make_node("Add", ["v", "one"], ["v_out"]),
            ],
            "spin",
            [
                helper.make_tensor_value_info("i", T.INT64, []),
                helper.make_tensor_value_info("cond", T.BOOL, []),
                helper.make_tensor_value_info("v", T.FLOAT, []),
            ],
            [helper.make_tensor_value_info("cond_out", T.BOOL, []), helper.make_tensor_value_info("v_out", T.FLOAT, [])],
        )
        g.node.extend(
            [
                helper.make_node("ReduceSum", ["input"], ["s"], keepdims=0),
                helper.make_node("Mul", ["s", "zero"], ["v0"]),
                helper.make_node("Loop", ["trips", "go", "v0"], ["extra"], body=body),
            ]
        )
    else:
        # Gather at index 100 of a 3-element table when the first column is over the line:
        # ONNX Runtime refuses the call ("indices element out of data bounds").
        g.initializer.extend(
            [
                const("col", 0, np.int64),
                const("line", args.fail_above),
                const("hundred", 100, np.int64),
                const("table", [1.0, 2.0, 3.0]),
            ]
        )
        g.node.extend(
            [
                helper.make_node("Gather", ["input", "col"], ["first"], axis=1),
                helper.make_node("ReduceMax", ["first"], ["top"], keepdims=0),
                helper.make_node("Greater", ["top", "line"], ["over"]),
                helper.make_node("Cast", ["over"], ["over_i"], to=T.INT64),
                helper.make_node("Mul", ["over_i", "hundred"], ["index"]),
                helper.make_node("Gather", ["table", "index"], ["extra"]),
            ]
        )
    g.node.extend(
        [helper.make_node("Mul", ["extra", "zero"], ["nothing"]), helper.make_node("Add", ["raw", "nothing"], ["output"])]
    )
    onnx.checker.check_model(m)
    onnx.save(m, args.dst)


if __name__ == "__main__":
    main()
