#!/usr/bin/env python3
"""Generate Ferry's Python gRPC stubs from proto/ into src/ (packages
ferry.registry.v1 and ferry.inference.v1), with grpcio-tools.

    python clients/python/generate.py          # write them
    python clients/python/generate.py --check  # fail if the checked-in ones differ (CI)
"""
import argparse
import filecmp
import pathlib
import sys
import tempfile

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROTOS = ["ferry/registry/v1/registry.proto", "ferry/inference/v1/inference.proto"]
PACKAGES = ["ferry", "ferry/registry", "ferry/registry/v1", "ferry/inference", "ferry/inference/v1"]


def generate(out: pathlib.Path) -> None:
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    for proto in PROTOS:
        args = ["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
                f"--grpc_python_out={out}", str(ROOT / "proto" / proto)]
        if protoc.main(args) != 0:
            sys.exit(f"protoc failed on {proto}")
    for package in PACKAGES:
        (out / package / "__init__.py").touch()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the checked-in stubs instead of writing")
    args = ap.parse_args()
    src = HERE / "src"
    if not args.check:
        generate(src)
        return
    with tempfile.TemporaryDirectory() as tmp:
        fresh = pathlib.Path(tmp)
        generate(fresh)
        stale = [str(p.relative_to(fresh)) for p in sorted(fresh.rglob("*.py*"))
                 if not (src / p.relative_to(fresh)).exists() or not filecmp.cmp(p, src / p.relative_to(fresh), shallow=False)]
        if stale:
            sys.exit(f"stubs out of date with proto/: {stale}; run python clients/python/generate.py")
        print(f"stubs match proto/ ({len(list(fresh.rglob('*_pb2*.py')))} modules)")


if __name__ == "__main__":
    main()
