#!/usr/bin/env python3
"""Generate crates/qapi/src/generated.rs from the QAPI schema files.

Reads crates/qapi/schema/{net,control}.json (QAPI's Python-literal syntax with
'#' comments), and writes two things into one Rust file:
  * static schema tables (`Ty`, `StructDef`, `UnionDef`, ...) that the input
    visitor walks to check arguments exactly as QEMU's QAPI visitor does;
  * plain Rust types (serde) for every struct, enum, union, command argument
    set and event.
Members and enum values whose 'if' condition is CONFIG_VMNET are left out, as
QEMU on Linux leaves them out.

Usage: xtask/qapi-gen.py [--check]   (--check: exit 1 if the file is stale)
"""
import ast
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA_DIR = os.path.join(ROOT, "crates", "qapi", "schema")
OUT = os.path.join(ROOT, "crates", "qapi", "src", "generated.rs")
FILES = ["sockets.json", "net.json", "control.json", "netdevd.json"]
# Conditions true on the platform we build for.
ENABLED_CONDITIONS = set()

BUILTINS = {
    "str": ("Str", "String"),
    "bool": ("Bool", "bool"),
    "int": ("Int", "i64"),
    "int8": ("Int8", "i8"),
    "int16": ("Int16", "i16"),
    "int32": ("Int32", "i32"),
    "int64": ("Int", "i64"),
    "uint8": ("Uint8", "u8"),
    "uint16": ("Uint16", "u16"),
    "uint32": ("Uint32", "u32"),
    "uint64": ("Uint64", "u64"),
    "size": ("Size", "u64"),
    "number": ("Number", "f64"),
    "any": ("Any", "serde_json::Value"),
}

# common.json's String, which net.json includes.
STRING_STRUCT = {"struct": "String", "data": {"str": "str"},
                 "doc": ["A fat type wrapping 'str', to be embedded in lists."]}


def read_exprs(path):
    """Yield (expr, doc_lines) for each top-level expression of a schema file."""
    text = open(path).read()
    exprs = []
    doc = []
    buf = ""
    depth = 0
    for line in text.splitlines():
        stripped = line.strip()
        if depth == 0 and stripped.startswith("#"):
            body = stripped[1:]
            if body.startswith(" "):
                body = body[1:]
            if body.startswith("#"):
                if buf == "":
                    doc = [] if body == "#" and not doc else doc
                continue
            doc.append(body)
            continue
        if depth == 0 and stripped == "":
            continue
        buf += line + "\n"
        for ch in line:
            if ch in "{[":
                depth += 1
            elif ch in "}]":
                depth -= 1
        if depth == 0 and buf.strip():
            literal = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", buf))
            exprs.append((ast.literal_eval(literal), doc))
            buf = ""
            doc = []
    return exprs


def enabled(item):
    cond = item.get("if") if isinstance(item, dict) else None
    return cond is None or cond in ENABLED_CONDITIONS


# QAPI names that would shadow Rust's prelude get another Rust name.
RUST_NAMES = {"String": "StringItem"}


def camel(name):
    if name in RUST_NAMES:
        return RUST_NAMES[name]
    parts = name.replace("_", "-").split("-")
    return "".join(p[:1].upper() + p[1:] for p in parts if p)


def snake(name):
    s = name.replace("-", "_").lower()
    if s in ("type", "ref", "mod", "fn", "loop", "match", "use", "in", "impl", "move", "static",
             "abstract", "box", "do", "final", "macro", "override", "priv", "try", "typeof",
             "unsized", "virtual", "yield", "async", "await", "dyn", "become"):
        s = "r#" + s
    return s


def upper(name):
    out = ""
    for i, ch in enumerate(name):
        if ch.isupper() and i and (name[i - 1].islower() or name[i - 1].isdigit()):
            out += "_"
        out += ch.upper() if ch.isalnum() else "_"
    return out


class Schema:
    def __init__(self):
        self.enums = {}
        self.structs = {"String": STRING_STRUCT}
        self.unions = {}
        self.commands = []
        self.events = []
        self.order = [("struct", "String")]

    def load(self, path):
        for expr, doc in read_exprs(path):
            if "include" in expr:
                continue
            expr = dict(expr)
            expr["doc"] = doc
            if not enabled(expr):
                continue
            for kind in ("enum", "struct", "union", "command", "event"):
                if kind in expr:
                    name = expr[kind]
                    if kind == "enum":
                        self.enums[name] = expr
                    elif kind == "struct":
                        self.structs[name] = expr
                    elif kind == "union":
                        self.unions[name] = expr
                    elif kind == "command":
                        self.commands.append(expr)
                    else:
                        self.events.append(expr)
                    if kind in ("enum", "struct", "union"):
                        self.order.append((kind, name))


def members(data):
    """[(name, type, optional, unstable)] in schema order, conditions applied."""
    out = []
    for key, val in data.items():
        if isinstance(val, dict):
            if not enabled(val):
                continue
            unstable = "unstable" in val.get("features", [])
            val = val["type"]
        else:
            unstable = False
        optional = key.startswith("*")
        out.append((key.lstrip("*"), val, optional, unstable))
    return out


def enum_values(expr):
    vals = []
    for v in expr["data"]:
        if isinstance(v, dict):
            if not enabled(v):
                continue
            v = v["name"]
        vals.append(v)
    return vals


class Gen:
    def __init__(self, schema):
        self.s = schema
        self.out = []

    def w(self, line=""):
        self.out.append(line)

    def ty_expr(self, t):
        """A `Ty` expression for a schema type reference."""
        if isinstance(t, list):
            return "Ty::List(&%s)" % self.ty_expr(t[0])
        if t in BUILTINS:
            return "Ty::" + BUILTINS[t][0]
        if t in self.s.enums:
            return "Ty::Enum(&%s)" % upper(t)
        if t in self.s.structs:
            return "Ty::Struct(&%s)" % upper(t)
        if t in self.s.unions:
            return "Ty::Union(&%s)" % upper(t)
        raise SystemExit("unknown type %r" % t)

    def rust_ty(self, t):
        if isinstance(t, list):
            return "Vec<%s>" % self.rust_ty(t[0])
        if t in BUILTINS:
            return BUILTINS[t][1]
        return camel(t)

    def doc(self, lines, indent=""):
        lines = [l for l in lines]
        while lines and not lines[0].strip():
            lines.pop(0)
        while lines and not lines[-1].strip():
            lines.pop()
        if not lines:
            return
        self.w('%s/// ```text' % indent)
        for l in lines:
            self.w(("%s/// %s" % (indent, l)).rstrip())
        self.w('%s/// ```' % indent)

    def member_table(self, mems):
        rows = []
        for name, t, opt, unstable in mems:
            rows.append('Member { name: "%s", ty: %s, optional: %s, unstable: %s }'
                        % (name, self.ty_expr(t), "true" if opt else "false",
                           "true" if unstable else "false"))
        return "&[" + ", ".join(rows) + "]"

    def struct_members(self, name):
        expr = self.s.structs[name]
        mems = []
        if "base" in expr:
            mems += self.struct_members(expr["base"])
        return mems + members(expr.get("data", {}))

    def gen_tables(self):
        w = self.w
        w("// ---- schema tables (walked by the input visitor) ----")
        w()
        for kind, name in self.s.order:
            if kind == "enum":
                vals = enum_values(self.s.enums[name])
                w('pub static %s: EnumDef = EnumDef { name: "%s", values: &[%s] };'
                  % (upper(name), name, ", ".join('"%s"' % v for v in vals)))
            elif kind == "struct":
                w('pub static %s: StructDef = StructDef { name: "%s", members: %s };'
                  % (upper(name), name, self.member_table(self.struct_members(name))))
            else:
                u = self.s.unions[name]
                base = u["base"]
                base_mems = members(base) if isinstance(base, dict) else self.struct_members(base)
                variants = []
                for tag, t in u["data"].items():
                    if isinstance(t, dict):
                        if not enabled(t):
                            continue
                        t = t["type"]
                    variants.append('("%s", &%s)' % (tag, upper(t)))
                w('pub static %s: UnionDef = UnionDef { name: "%s", base: %s, discriminator: "%s", variants: &[%s] };'
                  % (upper(name), name, self.member_table(base_mems), u["discriminator"],
                     ", ".join(variants)))
        w()
        w("/// Every command of the schema, in schema order.")
        w("pub static COMMANDS: &[CommandDef] = &[")
        for c in self.s.commands:
            data = c.get("data")
            if data is None:
                args = "Args::None"
            elif isinstance(data, dict):
                args = "Args::Members(%s)" % self.member_table(members(data))
            else:
                args = "Args::Boxed(%s)" % self.ty_expr(data)
            w('    CommandDef { name: "%s", args: %s, allow_preconfig: %s, allow_oob: %s },'
              % (c["command"], args, "true" if c.get("allow-preconfig") else "false",
                 "true" if c.get("allow-oob") else "false"))
        w("];")
        w()
        w("/// Every event of the schema, in schema order.")
        w("pub static EVENTS: &[EventDef] = &[")
        for e in self.s.events:
            w('    EventDef { name: "%s", data: %s },'
              % (e["event"], self.member_table(members(e.get("data", {})))))
        w("];")
        w()

    def gen_struct_type(self, name, mems, doc, derive_default=True):
        w = self.w
        self.doc(doc)
        w("#[derive(Debug, Clone, PartialEq, Serialize, Deserialize%s)]"
          % (", Default" if derive_default and all(m[2] for m in mems) else ""))
        w("pub struct %s {" % camel(name))
        for mname, t, opt, _ in mems:
            rt = self.rust_ty(t)
            if snake(mname).lstrip("r#") != mname or "-" in mname:
                w('    #[serde(rename = "%s")]' % mname)
            if opt:
                w('    #[serde(default, skip_serializing_if = "Option::is_none")]')
                rt = "Option<%s>" % rt
            w("    pub %s: %s," % (snake(mname), rt))
        w("}")
        w()

    def gen_types(self):
        w = self.w
        w("// ---- typed values ----")
        w()
        for kind, name in self.s.order:
            if kind == "enum":
                e = self.s.enums[name]
                self.doc(e["doc"])
                w("#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]")
                w("pub enum %s {" % camel(name))
                for v in enum_values(e):
                    w('    #[serde(rename = "%s")]' % v)
                    w("    %s," % camel(v))
                w("}")
                w()
                w("impl %s {" % camel(name))
                w("    /// The value's name in the schema.")
                w("    pub fn as_str(self) -> &'static str {")
                w("        match self {")
                for v in enum_values(e):
                    w('            Self::%s => "%s",' % (camel(v), v))
                w("        }")
                w("    }")
                w("}")
                w()
            elif kind == "struct":
                self.gen_struct_type(name, self.struct_members(name), self.s.structs[name]["doc"])
            else:
                u = self.s.unions[name]
                base = u["base"]
                base_mems = members(base) if isinstance(base, dict) else self.struct_members(base)
                disc = u["discriminator"]
                disc_ty = [m for m in base_mems if m[0] == disc][0][1]
                self.doc(u["doc"])
                w("#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]")
                w("pub struct %s {" % camel(name))
                for mname, t, opt, _ in base_mems:
                    if mname == disc:
                        continue
                    rt = self.rust_ty(t)
                    if opt:
                        w('    #[serde(default, skip_serializing_if = "Option::is_none")]')
                        rt = "Option<%s>" % rt
                    w("    pub %s: %s," % (snake(mname), rt))
                w("    #[serde(flatten)]")
                w("    pub variant: %sVariant," % camel(name))
                w("}")
                w()
                w("/// The branches of [`%s`], selected by `%s`." % (camel(name), disc))
                w("#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]")
                w('#[serde(tag = "%s")]' % disc)
                w("pub enum %sVariant {" % camel(name))
                branches = {}
                for tag, t in u["data"].items():
                    if isinstance(t, dict):
                        if not enabled(t):
                            continue
                        t = t["type"]
                    branches[tag] = t
                for v in enum_values(self.s.enums[disc_ty]):
                    w('    #[serde(rename = "%s")]' % v)
                    if v in branches:
                        w("    %s(%s)," % (camel(v), camel(branches[v])))
                    else:
                        w("    %s," % camel(v))
                w("}")
                w()
                w("impl %sVariant {" % camel(name))
                w("    /// The discriminator value of this branch.")
                w("    pub fn kind(&self) -> %s {" % camel(disc_ty))
                w("        match self {")
                for v in enum_values(self.s.enums[disc_ty]):
                    pat = "(_)" if v in branches else ""
                    w("            Self::%s%s => %s::%s," % (camel(v), pat, camel(disc_ty), camel(v)))
                w("        }")
                w("    }")
                w("}")
                w()
        for c in self.s.commands:
            data = c.get("data")
            if isinstance(data, dict):
                self.gen_struct_type("%sArgs" % camel(c["command"]), members(data),
                                     ["Arguments of `%s`." % c["command"]])
        for e in self.s.events:
            data = e.get("data")
            if isinstance(data, dict):
                self.gen_struct_type("%sEvent" % camel(e["event"].lower()), members(data),
                                     ["Data of the event `%s`." % e["event"]])

    def render(self):
        w = self.w
        w("// @generated by xtask/qapi-gen.py from crates/qapi/schema/*.json. Do not edit;")
        w("// run `python3 xtask/qapi-gen.py` after changing the schema.")
        w("#![allow(missing_docs, clippy::all)]")
        w()
        w("use serde::{Deserialize, Serialize};")
        w()
        w("use crate::schema::{Args, CommandDef, EnumDef, EventDef, Member, StructDef, Ty, UnionDef};")
        w()
        self.gen_tables()
        self.gen_types()
        return "\n".join(self.out).rstrip() + "\n"


def main():
    schema = Schema()
    for f in FILES:
        schema.load(os.path.join(SCHEMA_DIR, f))
    text = Gen(schema).render()
    # Format the way `cargo fmt` would, so the checked-in file stays stable.
    text = subprocess.run(["rustfmt", "--edition", "2021", "--emit", "stdout", "-q"],
                          input=text, capture_output=True, text=True, check=True).stdout
    if "--check" in sys.argv:
        old = open(OUT).read() if os.path.exists(OUT) else ""
        if old != text:
            print("crates/qapi/src/generated.rs is stale: run python3 xtask/qapi-gen.py")
            sys.exit(1)
        return
    with open(OUT, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
