#!/usr/bin/env python3
"""Render docs/api.md — the gRPC API reference — from proto/ and its comments
(protoc's descriptors with source info, through grpcio-tools).

    python docs/gen_proto_reference.py          # write docs/api.md
    python docs/gen_proto_reference.py --check  # fail if docs/api.md is stale (CI)
"""
import argparse
import pathlib
import sys
import tempfile

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ["ferry/registry/v1/registry.proto", "ferry/inference/v1/inference.proto"]
OUT = ROOT / "docs" / "api.md"
LABELS = {1: "", 2: "", 3: "repeated "}
TYPES = {1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 8: "bool", 9: "string", 12: "bytes",
         13: "uint32", 17: "sint32", 18: "sint64"}


def descriptors() -> descriptor_pb2.FileDescriptorSet:
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "set.pb"
        args = ["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", "--include_source_info",
                f"--descriptor_set_out={out}", *[str(ROOT / "proto" / p) for p in PROTOS]]
        if protoc.main(args) != 0:
            sys.exit("protoc failed")
        fds = descriptor_pb2.FileDescriptorSet()
        fds.ParseFromString(out.read_bytes())
        return fds


def comments(f: descriptor_pb2.FileDescriptorProto) -> dict:
    out = {}
    for loc in f.source_code_info.location:
        text = (loc.leading_comments or loc.trailing_comments).strip()
        if text:
            out[tuple(loc.path)] = " ".join(line.strip() for line in text.splitlines())
    return out


def field_type(fd: descriptor_pb2.FieldDescriptorProto) -> str:
    if fd.type_name:
        return fd.type_name.rsplit(".", 1)[-1]
    return TYPES.get(fd.type, str(fd.type))


def render() -> str:
    lines = ["# gRPC API reference", "",
             "Generated from `proto/` and its comments by `docs/gen_proto_reference.py`; do not edit by hand",
             "(CI fails when this file is stale). The Open Inference Protocol (`proto/inference/`) is KServe's",
             "and Triton's, unchanged.", ""]
    for f in descriptors().file:
        if f.name not in PROTOS:
            continue
        doc = comments(f)
        lines += [f"## `{f.package}`", "", f"`proto/{f.name}`", ""]
        for si, svc in enumerate(f.service):
            lines += [f"### service `{svc.name}`", ""]
            if doc.get((6, si)):
                lines += [doc[(6, si)], ""]
            lines += ["| method | request | response | what |", "|---|---|---|---|"]
            for mi, m in enumerate(svc.method):
                req = ("stream " if m.client_streaming else "") + m.input_type.rsplit(".", 1)[-1]
                resp = ("stream " if m.server_streaming else "") + m.output_type.rsplit(".", 1)[-1]
                lines.append(f"| `{m.name}` | `{req}` | `{resp}` | {doc.get((6, si, 2, mi), '')} |")
            lines.append("")
        for ei, e in enumerate(f.enum_type):
            lines += [f"### enum `{e.name}`", ""]
            if doc.get((5, ei)):
                lines += [doc[(5, ei)], ""]
            lines += ["| value | number | what |", "|---|---|---|"]
            lines += [f"| `{v.name}` | {v.number} | {doc.get((5, ei, 2, vi), '')} |" for vi, v in enumerate(e.value)]
            lines.append("")
        for mi, msg in enumerate(f.message_type):
            lines += [f"### message `{msg.name}`", ""]
            if doc.get((4, mi)):
                lines += [doc[(4, mi)], ""]
            if msg.field:
                lines += ["| field | type | number | what |", "|---|---|---|---|"]
                for fi, fd in enumerate(msg.field):
                    oneof = f" (oneof `{msg.oneof_decl[fd.oneof_index].name}`)" if fd.HasField("oneof_index") else ""
                    lines.append(f"| `{fd.name}` | `{LABELS[fd.label]}{field_type(fd)}` | {fd.number} | "
                                 f"{doc.get((4, mi, 2, fi), '')}{oneof} |")
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            sys.exit("docs/api.md is stale: run python docs/gen_proto_reference.py")
        print("docs/api.md matches proto/")
    else:
        OUT.write_text(text)


if __name__ == "__main__":
    main()
