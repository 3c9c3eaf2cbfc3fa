"""Regenerate the committed stubs from ``protos/`` with grpc_tools (a dev dependency).

    python -m msmtrec_proto.generate            # rewrite the stubs in the repository
    python -m msmtrec_proto.generate --out DIR  # write them elsewhere (the staleness test)

The directory layout under ``protos/`` mirrors the Python package, so the generated modules
import each other as ``msmtrec_proto.federation.v1...`` without any path rewriting.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    return sorted(proto_root.rglob("*.proto"))


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc (python, grpc and .pyi outputs) into ``out_dir``; returns generated files."""
    import grpc_tools
    from grpc_tools import protoc  # dev dependency, imported only when generating

    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(grpc_tools.__file__).parent / "_proto"
    files = proto_files(proto_root)
    if not files:
        raise FileNotFoundError(f"no .proto files under {proto_root}")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(f.relative_to(proto_root)) for f in files),
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    stems = [out_dir / f.relative_to(proto_root).with_suffix("") for f in files]
    return sorted(
        s.with_name(s.name + suffix)
        for s in stems
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: repo)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
