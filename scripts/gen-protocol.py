#!/usr/bin/env python3
"""Generates qemud's Rust description of libvirt's RPC programs.

Reads libvirt's interface definitions (`src/remote/remote_protocol.x`,
`src/remote/qemu_protocol.x`) and the public API sources (`src/libvirt-*.c`)
from a libvirt source tree, and writes:

  protocol/src/remote/types.rs   every struct, union and constant of REMOTE
  protocol/src/remote/procs.rs   procedure numbers and per-procedure facts:
                                 the public API name, whether libvirt refuses
                                 it on a read-only connection, its streams
  protocol/src/qemu.rs           the same for the QEMU program

Usage: scripts/gen-protocol.py LIBVIRT_SOURCE_DIR

The output is committed; rerun only to move to another libvirt release.
(Debian: `apt-get source libvirt` gives the tree for the packaged version.)
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Constants the .x files take from C headers.
EXTERNAL_CONSTS = {
    "VIR_UUID_BUFLEN": 16,
    "VIR_SECURITY_MODEL_BUFLEN": 257,
    "VIR_SECURITY_LABEL_BUFLEN": 4097,
    "VIR_SECURITY_DOI_BUFLEN": 257,
    "VIR_TYPED_PARAM_INT": 1,
    "VIR_TYPED_PARAM_UINT": 2,
    "VIR_TYPED_PARAM_LLONG": 3,
    "VIR_TYPED_PARAM_ULLONG": 4,
    "VIR_TYPED_PARAM_DOUBLE": 5,
    "VIR_TYPED_PARAM_BOOLEAN": 6,
    "VIR_TYPED_PARAM_STRING": 7,
}

RUST_KEYWORDS = {"type", "match", "ref", "fn", "mod", "move", "self", "use", "where", "impl", "loop", "box"}

# Types written by hand in protocol/src/xdr.rs or remote/mod.rs.
HAND_WRITTEN = {
    "remote_nonnull_string": "XdrString",
    "remote_string": "OptString",
    "remote_uuid": "Uuid16",
}


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return "\n".join(line for line in text.split("\n") if not line.startswith("%"))


def camel(name, prefix):
    if name.startswith(prefix):
        name = name[len(prefix):]
    return "".join(p[:1].upper() + p[1:] for p in name.split("_") if p)


def snake(name):
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", s).lower()
    if s in RUST_KEYWORDS:
        s += "_"
    return s


class Parser:
    def __init__(self, prefix):
        self.prefix = prefix  # "remote_" or "qemu_"
        self.consts = dict(EXTERNAL_CONSTS)
        self.items = []  # (kind, name, data) in file order
        self.typedefs = {}
        self.procs = []  # (name, number, annotations)
        self.enums = set()

    def value(self, v):
        v = v.strip()
        if re.fullmatch(r"-?\d+", v):
            return int(v)
        if re.fullmatch(r"0x[0-9a-fA-F]+", v):
            return int(v, 16)
        return self.consts[v]

    def parse(self, text):
        raw = text
        body = strip_comments(text)
        for m in re.finditer(r"\bconst\s+(\w+)\s*=\s*([^;]+);", body):
            self.consts[m.group(1)] = self.value(m.group(2))
            self.items.append(("const", m.group(1), m.group(2).strip()))
        for m in re.finditer(r"\btypedef\s+([^;]+);", body):
            self.typedefs_decl(m.group(1))
        for m in re.finditer(r"\b(struct|union|enum)\s+(\w+)\s*(switch\s*\(([^)]*)\))?\s*\{(.*?)\}\s*;", body, re.S):
            kind, name, _, disc, inner = m.groups()
            if kind == "struct":
                self.items.append(("struct", name, self.fields(inner)))
            elif kind == "union":
                self.items.append(("union", name, (disc, self.union_arms(inner))))
            else:
                members = []
                for em in re.finditer(r"(\w+)\s*=\s*([^,\s]+)", inner):
                    self.consts[em.group(1)] = self.value(em.group(2))
                    members.append((em.group(1), self.consts[em.group(1)]))
                self.items.append(("enum", name, members))
                self.enums.add(name)
        # Procedures, with the annotation comment before each.
        for m in re.finditer(r"/\*\*(.*?)\*/\s*(\w+_PROC_\w+)\s*=\s*(\d+)", raw, re.S):
            notes = {}
            for am in re.finditer(r"@(\w+):\s*([^\n*]+)", m.group(1)):
                notes.setdefault(am.group(1), []).append(am.group(2).strip())
            self.procs.append((m.group(2), int(m.group(3)), notes))

    def typedefs_decl(self, decl):
        f = self.field(decl)
        if f:
            self.typedefs[f[0]] = f[1]

    def field(self, decl):
        decl = " ".join(decl.split())
        if not decl or decl == "void":
            return None
        m = re.fullmatch(r"(.+?)\s*(\*)?\s*(\w+)\s*(<([^>]*)>|\[([^\]]+)\])?", decl)
        if not m:
            raise ValueError("cannot parse declaration: " + decl)
        ty, ptr, name, _, var, fixed = m.groups()
        return (name, (ty.strip(), bool(ptr), var, fixed))

    def fields(self, inner):
        out = []
        for decl in inner.split(";"):
            f = self.field(decl)
            if f:
                out.append(f)
        return out

    def union_arms(self, inner):
        arms = []
        for m in re.finditer(r"case\s+(\w+)\s*:\s*([^;]+);", inner):
            arms.append((m.group(1), self.field(m.group(2))))
        return arms


def rust_scalar(ty):
    return {
        "int": "i32",
        "unsigned int": "u32",
        "unsigned": "u32",
        "hyper": "i64",
        "unsigned hyper": "u64",
        "double": "f64",
        "char": "i8",
        "unsigned char": "u8",
        "short": "i16",
        "unsigned short": "u16",
    }.get(ty)


class Emitter:
    def __init__(self, parsers, prefix):
        self.parsers = parsers
        self.prefix = prefix

    def type_name(self, ty):
        if ty in HAND_WRITTEN:
            return HAND_WRITTEN[ty]
        scalar = rust_scalar(ty)
        if scalar:
            return scalar
        for p in self.parsers:
            if ty in p.enums:
                return "i32"
            if ty in p.typedefs:
                return self.decl_type(p.typedefs[ty], p)
        pfx = "remote_" if ty.startswith("remote_") else self.prefix
        return camel(ty, pfx)

    def bound(self, v, p):
        if v is None or v == "":
            return "{ u32::MAX as usize }"
        v = v.strip()
        if re.fullmatch(r"\d+", v):
            return v
        return str(p.consts[v])

    def decl_type(self, decl, p):
        ty, ptr, var, fixed = decl
        if ty == "string":
            return "XdrString"
        if ty == "opaque":
            if fixed is not None:
                n = p.value(fixed)
                if n == 16:
                    return "Uuid16"
                raise ValueError("fixed opaque of %d" % n)
            return "Opaque<%s>" % self.bound(var, p)
        base = self.type_name(ty)
        if fixed is not None:
            base = "[%s; %d]" % (base, p.value(fixed))
        elif var is not None:
            base = "XdrVec<%s, %s>" % (base, self.bound(var, p))
        if ptr:
            base = "Option<%s>" % base
        return base


HEADER = """// @generated by scripts/gen-protocol.py from libvirt {version}'s {what}.
// Do not edit by hand: change the generator and run it again.
"""


def derive_for(fields_types):
    # f64 has no Eq; keep derives uniform.
    return "#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]"


def emit_types(parser, emitter, version, what, extra_use):
    out = [HEADER.format(version=version, what=what)]
    out.append("#![allow(clippy::all)]\n")
    out.append("use serde::{Deserialize, Serialize};\n")
    out.append(extra_use + "\n")
    for kind, name, data in parser.items:
        if kind == "const":
            if name in ("REMOTE_PROGRAM", "REMOTE_PROTOCOL_VERSION", "QEMU_PROGRAM", "QEMU_PROTOCOL_VERSION"):
                continue
            rust = name[len(parser.prefix.upper()):] if name.startswith(parser.prefix.upper()) else name
            out.append("pub const %s: usize = %d;" % (rust, parser.consts[name]))
        elif kind == "enum":
            if name.endswith("_procedure"):
                continue
            mod = snake(camel(name, parser.prefix))
            out.append("\n/// `%s`." % name)
            out.append("pub mod %s {" % mod)
            common = os.path.commonprefix([m for m, _ in data])
            common = common[: common.rfind("_") + 1]
            for member, value in data:
                short = member[len(common):]
                out.append("    pub const %s: i32 = %d;" % (short, value))
            out.append("}")
        elif kind == "struct":
            rname = camel(name, parser.prefix)
            out.append("\n/// `%s`." % name)
            out.append(derive_for(data))
            if not data:
                out.append("pub struct %s {}" % rname)
                continue
            out.append("pub struct %s {" % rname)
            for fname, decl in data:
                out.append("    pub %s: %s," % (snake(fname), emitter.decl_type(decl, parser)))
            out.append("}")
        elif kind == "union":
            disc, arms = data
            rname = camel(name, parser.prefix)
            out.append("\n/// `%s`: an XDR union, discriminant first." % name)
            out.append("#[derive(Clone, Debug, PartialEq)]")
            out.append("pub enum %s {" % rname)
            for case, (fname, decl) in arms:
                out.append("    %s(%s)," % (camel(fname, ""), emitter.decl_type(decl, parser)))
            out.append("}")
            out.append(emit_union_serde(rname, [(parser.consts[case], camel(fname, ""), emitter.decl_type(decl, parser)) for case, (fname, decl) in arms]))
    return "\n".join(out) + "\n"


def emit_union_serde(rname, arms):
    ser = []
    de = []
    for value, variant, _ in arms:
        ser.append(
            "            %s::%s(v) => {\n                t.serialize_element(&%di32)?;\n                t.serialize_element(v)?;\n            }"
            % (rname, variant, value)
        )
        de.append(
            "                    %d => %s::%s(seq.next_element()?.ok_or_else(|| serde::de::Error::custom(\"truncated union\"))?),"
            % (value, rname, variant)
        )
    return """
impl Serialize for %(n)s {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(2)?;
        match self {
%(ser)s
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for %(n)s {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = %(n)s;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("XDR union %(n)s")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<%(n)s, A::Error> {
                let disc: i32 = seq
                    .next_element()?
                    .ok_or_else(|| serde::de::Error::custom("truncated union"))?;
                Ok(match disc {
%(de)s
                    other => {
                        return Err(serde::de::Error::custom(format!(
                            "unknown discriminant {} of %(n)s",
                            other
                        )))
                    }
                })
            }
        }
        d.deserialize_tuple(2, V)
    }
}""" % {"n": rname, "ser": "\n".join(ser), "de": "\n".join(de)}


def api_facts(src):
    """Public API name -> "always" | "flags" | "never" (read-only refusal)."""
    facts = {}
    for fname in sorted(os.listdir(src)):
        if not (fname.startswith("libvirt") and fname.endswith(".c")):
            continue
        text = open(os.path.join(src, fname), encoding="utf-8", errors="replace").read()
        for m in re.finditer(r"^(?:int |char \*)?(vir\w+)\(.*?^\{(.*?)^\}", text, re.S | re.M):
            name, body = m.group(1), m.group(2)
            ro = "never"
            for line in body.split("\n"):
                if "virCheckReadOnlyGoto" in line:
                    indent = len(line) - len(line.lstrip(" "))
                    ro = "always" if indent <= 4 else "flags"
                    if ro == "always":
                        break
            facts[name] = ro
    return facts


# Procedure names that do not follow the mechanical name mapping.
API_OVERRIDES = {
    "CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY": "virConnectDomainEventRegisterAny",
    "CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY": "virConnectDomainEventDeregisterAny",
    "CONNECT_NETWORK_EVENT_REGISTER_ANY": "virConnectNetworkEventRegisterAny",
    "CONNECT_NETWORK_EVENT_DEREGISTER_ANY": "virConnectNetworkEventDeregisterAny",
    "DOMAIN_MIGRATE_PREPARE_TUNNEL3_PARAMS": "virDomainMigratePrepareTunnel3Params",
    "AUTH_LIST": "virConnectAuthList",
    "AUTH_SASL_INIT": "virConnectAuthSaslInit",
    "AUTH_SASL_START": "virConnectAuthSaslStart",
    "AUTH_SASL_STEP": "virConnectAuthSaslStep",
    "AUTH_POLKIT": "virConnectAuthPolkit",
    "CONNECT_OPEN": "virConnectOpen",
    "CONNECT_CLOSE": "virConnectClose",
}


def api_name(proc, prefix, facts):
    short = proc[len(prefix):]
    if short in API_OVERRIDES:
        return API_OVERRIDES[short]
    key = short.replace("_", "").lower()
    if prefix.startswith("QEMU"):
        key = "qemu" + key
    for name in facts:
        if name[3:].lower() == key:
            return name
    if key.endswith("callbackregisterany") or key.endswith("callbackderegisterany"):
        pass
    # Private procedures (migration steps, event messages) have no public API;
    # libvirt's own messages name them after the driver entry point.
    return "vir" + camel(short.lower(), "")


def emit_procs(parser, facts, version, what, proc_prefix, lib_ro_overrides):
    out = [HEADER.format(version=version, what=what)]
    out.append("//! Procedure numbers, and what libvirt says of each: the public API name")
    out.append("//! used in error messages, whether a read-only connection is refused it")
    out.append("//! (`Always`, or only for some flags: `Flags`), and its stream, if any.\n")
    out.append("#[allow(unused_imports)]")
    out.append("use crate::procinfo::{ProcFacts, ReadOnly, Stream};\n")
    rows = []
    for name, number, notes in sorted(parser.procs, key=lambda p: p[1]):
        short = name[len(proc_prefix):]
        out.append("pub const %s: i32 = %d;" % (short, number))
        api = api_name(name, proc_prefix, facts)
        ro = facts.get(api, "never")
        ro = lib_ro_overrides.get(short, ro)
        stream = "None"
        if "readstream" in notes:
            stream = "Some(Stream::Read)"
        elif "writestream" in notes:
            stream = "Some(Stream::Write)"
        high = "priority" in notes and notes["priority"][0] == "high"
        ro_v = {"always": "ReadOnly::Always", "flags": "ReadOnly::Flags", "never": "ReadOnly::Never"}[ro]
        rows.append(
            "    ProcFacts { number: %d, symbol: \"%s\", api: \"%s\", read_only: %s, stream: %s, high_priority: %s },"
            % (number, short, api, ro_v, stream, "true" if high else "false")
        )
    out.append("\n/// Every procedure of the program, in number order.")
    out.append("pub const ALL: &[ProcFacts] = &[")
    out.extend(rows)
    out.append("];")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    src = sys.argv[1]
    version = "unknown"
    meson = os.path.join(src, "meson.build")
    if os.path.exists(meson):
        m = re.search(r"version:\s*'([\d.]+)'", open(meson).read())
        if m:
            version = m.group(1)
    facts = api_facts(os.path.join(src, "src"))

    remote = Parser("remote_")
    remote.parse(open(os.path.join(src, "src/remote/remote_protocol.x")).read())
    qemu = Parser("qemu_")
    qemu.consts.update(remote.consts)
    qemu.typedefs.update(remote.typedefs)
    qemu.parse(open(os.path.join(src, "src/remote/qemu_protocol.x")).read())

    emitter = Emitter([remote], "remote_")
    types = emit_types(remote, emitter, version, "remote_protocol.x", "use crate::xdr::{Opaque, OptString, Uuid16, XdrString, XdrVec};")
    procs = emit_procs(remote, facts, version, "remote_protocol.x and public API sources", "REMOTE_PROC_", {})

    qemitter = Emitter([qemu, remote], "qemu_")
    qtypes = emit_types(qemu, qemitter, version, "qemu_protocol.x", "use crate::remote::types::*;\n#[allow(unused_imports)]\nuse crate::xdr::{Opaque, OptString, Uuid16, XdrString, XdrVec};")
    qprocs = emit_procs(qemu, facts, version, "qemu_protocol.x and public API sources", "QEMU_PROC_", {})

    def write(rel, text):
        path = os.path.join(ROOT, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)

    write("protocol/src/remote/types.rs", types)
    write("protocol/src/remote/procs.rs", procs)
    write("protocol/src/qemu/types.rs", qtypes)
    write("protocol/src/qemu/procs.rs", qprocs)


if __name__ == "__main__":
    main()
