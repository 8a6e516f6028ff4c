//! The shapes of the generated schema tables: what the input visitor walks.

/// A QAPI type.
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    Str,
    Bool,
    /// `int` and `int64`.
    Int,
    Int8,
    Int16,
    Int32,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    /// `size`: a `uint64` on QMP, with suffixes on the command line.
    Size,
    Number,
    Any,
    Enum(&'static EnumDef),
    Struct(&'static StructDef),
    Union(&'static UnionDef),
    List(&'static Ty),
}

/// One member of a struct, union base or argument set.
#[derive(Debug)]
pub struct Member {
    pub name: &'static str,
    pub ty: Ty,
    pub optional: bool,
    /// Carries the `unstable` feature (accepted under QEMU's default policy).
    pub unstable: bool,
}

/// An enum; values compiled out for this platform are absent.
#[derive(Debug)]
pub struct EnumDef {
    pub name: &'static str,
    pub values: &'static [&'static str],
}

/// A struct, with its base's members first.
#[derive(Debug)]
pub struct StructDef {
    pub name: &'static str,
    pub members: &'static [Member],
}

/// A flat union: base members, then the members of the branch the discriminator selects.
#[derive(Debug)]
pub struct UnionDef {
    pub name: &'static str,
    pub base: &'static [Member],
    pub discriminator: &'static str,
    pub variants: &'static [(&'static str, &'static StructDef)],
}

/// How a command takes its arguments.
#[derive(Debug)]
pub enum Args {
    None,
    /// Arguments declared inline (`'data': {...}`).
    Members(&'static [Member]),
    /// `'boxed': true` or a named type: the arguments object is that type.
    Boxed(Ty),
}

/// A command of the schema.
#[derive(Debug)]
pub struct CommandDef {
    pub name: &'static str,
    pub args: Args,
    pub allow_preconfig: bool,
    pub allow_oob: bool,
}

/// An event of the schema.
#[derive(Debug)]
pub struct EventDef {
    pub name: &'static str,
    pub data: &'static [Member],
}

impl UnionDef {
    /// The branch for a discriminator value, if it has members.
    pub fn variant(&self, tag: &str) -> Option<&'static StructDef> {
        self.variants
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, s)| *s)
    }
}

/// Look a command up by name.
pub fn command(name: &str) -> Option<&'static CommandDef> {
    crate::generated::COMMANDS.iter().find(|c| c.name == name)
}

/// The argument type of a command, as something the visitor can walk.
pub fn command_args_ty(cmd: &'static CommandDef) -> Option<ArgsTy> {
    match &cmd.args {
        Args::None => None,
        Args::Members(m) => Some(ArgsTy::Members(m)),
        Args::Boxed(t) => Some(ArgsTy::Ty(*t)),
    }
}

/// See [`command_args_ty`].
#[derive(Debug, Clone, Copy)]
pub enum ArgsTy {
    Members(&'static [Member]),
    Ty(Ty),
}
