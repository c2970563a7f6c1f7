"""Compare duro-proto's compiled descriptor with the one shipped in the Python `durabletask` SDK.

Usage (needs the `protobuf` Python package; run `cargo build -p duro-proto` first):
    python proto/scripts/compare_with_python_sdk.py [PY_SDK_ROOT] [DESCRIPTOR_BIN]
PY_SDK_ROOT is a directory containing `durabletask/` (an unpacked wheel or site-packages; default:
the installed package). DESCRIPTOR_BIN defaults to target/debug/build/duro-proto-*/out/orchestrator_service.bin.
Expected differences: GetWorkItemsRequest.12 name, OrchestrationIdReusePolicy.2 (legacyAction),
and the three upstream-deprecated fields not being marked deprecated.
"""

import glob
import os
import sys

if len(sys.argv) > 1 and sys.argv[1]:
    sys.path.insert(0, sys.argv[1])
from durabletask.internal import orchestrator_service_pb2 as pb
from google.protobuf import descriptor_pb2 as d

F = d.FieldDescriptorProto
py = d.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
fds = d.FileDescriptorSet.FromString(
    open(
        sys.argv[2]
        if len(sys.argv) > 2
        else max(
            glob.glob(
                os.path.join(
                    os.path.dirname(__file__), "../../target/debug/build/duro-proto-*/out/orchestrator_service.bin"
                )
            ),
            key=os.path.getmtime,
        ),
        "rb",
    ).read()
)
ours = [f for f in fds.file if f.name == "orchestrator_service.proto"][0]
issues = []


def chk(cond, msg):
    if not cond:
        issues.append(msg)


chk(ours.package == py.package == "", f"package ours={ours.package!r} py={py.package!r}")
chk(ours.syntax == py.syntax, f"syntax {ours.syntax} vs {py.syntax}")
chk(list(ours.dependency) == list(py.dependency), f"deps {list(ours.dependency)} vs {list(py.dependency)}")
for opt in ("java_package", "go_package", "csharp_namespace", "java_multiple_files"):
    a, b = getattr(ours.options, opt), getattr(py.options, opt)
    chk(a == b and ours.options.HasField(opt) == py.options.HasField(opt), f"option {opt}: ours={a!r} py={b!r}")


def flatten(msgs, prefix=""):
    out = {}
    for m in msgs:
        out[prefix + m.name] = m
        out.update(flatten(m.nested_type, prefix + m.name + "."))
    return out


pm, om = flatten(py.message_type), flatten(ours.message_type)
for n in sorted(set(pm) - set(om)):
    issues.append(f"MISSING message {n} (in Python descriptor)")
for n in sorted(set(om) - set(pm)):
    issues.append(f"EXTRA message {n} (not in Python descriptor)")


def fsig(m, f):
    oneof = m.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") and not f.proto3_optional else None
    return (f.name, F.Type.Name(f.type), F.Label.Name(f.label), f.type_name, oneof, f.proto3_optional)


for n in sorted(set(pm) & set(om)):
    a, b = pm[n], om[n]
    chk(a.options.map_entry == b.options.map_entry, f"{n}: map_entry differs")
    af = {f.number: fsig(a, f) for f in a.field}
    bf = {f.number: fsig(b, f) for f in b.field}
    for num in sorted(set(af) | set(bf)):
        if num not in bf:
            issues.append(f"{n}: field {num} {af[num]} missing in ours")
        elif num not in af:
            reserved = any(r.start <= num < r.end for r in a.reserved_range)
            issues.append(f"{n}: field {num} {bf[num]} extra in ours{' (reserved in Python)' if reserved else ''}")
        elif af[num] != bf[num]:
            issues.append(f"{n}: field {num} py={af[num]} ours={bf[num]}")
    for num in sorted(set(f.number for f in a.field) & set(f.number for f in b.field)):
        fa = [f for f in a.field if f.number == num][0]
        fb = [f for f in b.field if f.number == num][0]
        if fa.options.deprecated != fb.options.deprecated:
            issues.append(f"{n}.{fa.name}: deprecated py={fa.options.deprecated} ours={fb.options.deprecated}")
    chk(
        sorted((r.start, r.end) for r in a.reserved_range) == sorted((r.start, r.end) for r in b.reserved_range),
        f"{n}: reserved py={[(r.start, r.end) for r in a.reserved_range]} "
        f"ours={[(r.start, r.end) for r in b.reserved_range]}",
    )
pe = {e.name: [(v.name, v.number) for v in e.value] for e in py.enum_type}
oe = {e.name: [(v.name, v.number) for v in e.value] for e in ours.enum_type}
chk(pe == oe, f"enums py={pe} ours={oe}")


def svc(fp):
    return {
        s.name: [(m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming) for m in s.method]
        for s in fp.service
    }


ps, os_ = svc(py), svc(ours)
chk(set(ps) == set(os_), f"services {set(ps)} vs {set(os_)}")
for s in ps:
    pa = {m[0]: m for m in ps[s]}
    oa = {m[0]: m for m in os_.get(s, [])}
    for k in sorted(set(pa) | set(oa)):
        chk(pa.get(k) == oa.get(k), f"rpc {s}.{k}: py={pa.get(k)} ours={oa.get(k)}")
    print(f"service {s}: {len(oa)} rpcs (python {len(pa)})")
print(
    f"messages: ours={len([m for m in om if not om[m].options.map_entry])} "
    f"python={len([m for m in pm if not pm[m].options.map_entry])}"
)
print("\n".join(issues) if issues else "NO MISMATCHES")
