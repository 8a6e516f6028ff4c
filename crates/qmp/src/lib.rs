//! A QMP server engine, sans I/O: bytes in, reply lines out.
//!
//! [`Session`] is one client connection: it owns the JSON stream parser ([`json`]),
//! capability negotiation, QMP's request rules (QEMU 7.2's `qapi/qmp-dispatch.c` and
//! `monitor/qmp.c`), argument checking against the command table (`netdevd-qapi`'s
//! visitor), and reply/event formatting ([`emit`]). What a command *does* is the caller's:
//! it is handed checked arguments through [`Handler`].
//!
//! This crate knows nothing of networking.
#![forbid(unsafe_code)]

pub mod emit;
pub mod json;

use netdevd_qapi::schema::{command_args_ty, CommandDef};
use netdevd_qapi::visit::visit_args;
use serde_json::{json, Map, Value};

/// QMP's error classes (QEMU's `QapiErrorClass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    GenericError,
    CommandNotFound,
    DeviceNotActive,
    DeviceNotFound,
    KVMMissingCap,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::KVMMissingCap => "KVMMissingCap",
        }
    }
}

/// An error as a QMP client sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{desc}")]
pub struct QmpError {
    pub class: ErrorClass,
    pub desc: String,
}

impl QmpError {
    pub fn generic(desc: impl Into<String>) -> Self {
        QmpError {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }
    pub fn device_not_found(name: &str) -> Self {
        QmpError {
            class: ErrorClass::DeviceNotFound,
            desc: format!("Device '{name}' not found"),
        }
    }
    fn command_not_found(desc: impl Into<String>) -> Self {
        QmpError {
            class: ErrorClass::CommandNotFound,
            desc: desc.into(),
        }
    }
}

/// What runs the commands. Arguments arrive checked and normalised against the command's
/// schema, so the handler can deserialise them into the generated types without failing.
pub trait Handler {
    fn execute(&mut self, command: &'static CommandDef, args: Value) -> Result<Value, QmpError>;
}

impl<F: FnMut(&'static CommandDef, Value) -> Result<Value, QmpError>> Handler for F {
    fn execute(&mut self, command: &'static CommandDef, args: Value) -> Result<Value, QmpError> {
        self(command, args)
    }
}

/// The server's identity for the greeting and `query-version`.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// The QEMU version whose QMP this server follows.
    pub qemu: (u32, u32, u32),
    pub package: String,
}

impl ServerInfo {
    pub fn version_value(&self) -> Value {
        json!({"qemu": {"micro": self.qemu.2, "minor": self.qemu.1, "major": self.qemu.0},
               "package": self.package})
    }
}

/// One QMP connection.
#[derive(Debug)]
pub struct Session {
    commands: &'static [CommandDef],
    stream: json::JsonStream,
    negotiated: bool,
    oob: bool,
    /// Set once `quit` has been answered: further input is ignored.
    closed: bool,
}

/// The greeting line a new connection gets.
pub fn greeting(info: &ServerInfo) -> String {
    emit::to_line(&json!({"QMP": {"version": info.version_value(), "capabilities": ["oob"]}}))
}

/// An event line with QEMU's timestamp (`seconds`/`microseconds` of the wall clock).
pub fn event_line(name: &str, data: Option<Value>, now: std::time::SystemTime) -> String {
    let (s, us) = match now.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_micros() as i64),
        Err(_) => (-1, -1),
    };
    let mut m = Map::new();
    m.insert("event".into(), Value::String(name.into()));
    if let Some(d) = data {
        m.insert("data".into(), d);
    }
    m.insert(
        "timestamp".into(),
        json!({"seconds": s, "microseconds": us}),
    );
    emit::to_line(&Value::Object(m))
}

impl Session {
    pub fn new(commands: &'static [CommandDef]) -> Self {
        Session {
            commands,
            stream: json::JsonStream::new(),
            negotiated: false,
            oob: false,
            closed: false,
        }
    }

    /// Whether events may be sent to this session (only after negotiation).
    pub fn wants_events(&self) -> bool {
        self.negotiated && !self.closed
    }

    /// Feed received bytes; run every complete request through `handler`; append the reply
    /// lines to `out`. Requests run one at a time, in order.
    pub fn feed(&mut self, data: &[u8], handler: &mut dyn Handler, out: &mut String) {
        let mut msgs = Vec::new();
        self.stream.feed(data, &mut msgs);
        for msg in msgs {
            if self.closed {
                return;
            }
            let reply = match msg {
                Ok(v) => self.request(v, handler),
                Err(desc) => reply_error(None, &QmpError::generic(desc)),
            };
            out.push_str(&reply);
        }
    }

    /// Mark the session finished (after `quit`): nothing more is read or answered.
    pub fn close(&mut self) {
        self.closed = true;
    }

    fn request(&mut self, req: Value, handler: &mut dyn Handler) -> String {
        let Value::Object(obj) = req else {
            return reply_error(None, &QmpError::generic("QMP input must be a JSON object"));
        };
        let id = obj.get("id").cloned();
        match self.dispatch(&obj, handler) {
            Ok(v) => {
                let mut m = Map::new();
                m.insert("return".into(), v);
                if let Some(id) = id {
                    m.insert("id".into(), id);
                }
                emit::to_line(&Value::Object(m))
            }
            Err(e) => reply_error(id, &e),
        }
    }

    /// QEMU's `qmp_dispatch` with the monitor's negotiation rules around it.
    fn dispatch(
        &mut self,
        obj: &Map<String, Value>,
        handler: &mut dyn Handler,
    ) -> Result<Value, QmpError> {
        for (k, v) in obj {
            match k.as_str() {
                "execute" => {
                    if !v.is_string() {
                        return Err(QmpError::generic(
                            "QMP input member 'execute' must be a string",
                        ));
                    }
                }
                "exec-oob" if self.oob => {
                    if !v.is_string() {
                        return Err(QmpError::generic(
                            "QMP input member 'exec-oob' must be a string",
                        ));
                    }
                }
                "arguments" => {
                    if !v.is_object() {
                        return Err(QmpError::generic(
                            "QMP input member 'arguments' must be an object",
                        ));
                    }
                }
                "id" => {}
                other => {
                    return Err(QmpError::generic(format!(
                        "QMP input member '{other}' is unexpected"
                    )))
                }
            }
        }
        let (name, oob) = match (obj.get("execute"), obj.get("exec-oob")) {
            (Some(Value::String(_)), Some(_)) => {
                return Err(QmpError::generic(
                    "QMP input member 'exec-oob' clashes with 'execute'",
                ))
            }
            (Some(Value::String(n)), None) => (n.as_str(), false),
            (None, Some(Value::String(n))) => (n.as_str(), true),
            _ => return Err(QmpError::generic("QMP input lacks member 'execute'")),
        };
        if !self.negotiated && name != "qmp_capabilities" {
            return Err(QmpError::command_not_found(
                "Expecting capabilities negotiation with 'qmp_capabilities'",
            ));
        }
        let Some(cmd) = self.commands.iter().find(|c| c.name == name) else {
            return Err(QmpError::command_not_found(format!(
                "The command {name} has not been found"
            )));
        };
        if oob && !cmd.allow_oob {
            return Err(QmpError::generic(format!(
                "The command {name} does not support OOB"
            )));
        }
        if name == "qmp_capabilities" && self.negotiated {
            return Err(QmpError::command_not_found(
                "Capabilities negotiation is already complete, command ignored",
            ));
        }
        let args = visit_args(obj.get("arguments"), command_args_ty(cmd))
            .map_err(|e| QmpError::generic(e.to_string()))?;
        match name {
            "qmp_capabilities" => {
                if let Some(Value::Array(caps)) = args.get("enable") {
                    // "oob" is the only capability in the enum, and it is offered.
                    if caps.iter().any(|c| c == "oob") {
                        self.oob = true;
                    }
                }
                self.negotiated = true;
                Ok(json!({}))
            }
            "query-commands" => Ok(Value::Array(
                self.commands
                    .iter()
                    .map(|c| json!({"name": c.name}))
                    .collect(),
            )),
            _ => handler.execute(cmd, args),
        }
    }
}

fn reply_error(id: Option<Value>, e: &QmpError) -> String {
    let mut m = Map::new();
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    m.insert(
        "error".into(),
        json!({"class": e.class.as_str(), "desc": e.desc}),
    );
    emit::to_line(&Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netdevd_qapi::COMMANDS;

    fn run(session: &mut Session, input: &str) -> Vec<Value> {
        let mut out = String::new();
        let mut handler = |cmd: &'static CommandDef, args: Value| -> Result<Value, QmpError> {
            match cmd.name {
                "set_link" => Err(QmpError::device_not_found(
                    args["name"].as_str().unwrap_or(""),
                )),
                _ => Ok(json!({})),
            }
        };
        session.feed(input.as_bytes(), &mut handler, &mut out);
        assert!(out.ends_with("\r\n") || out.is_empty());
        out.split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn negotiation() {
        let mut s = Session::new(COMMANDS);
        let r = run(&mut s, r#"{"execute":"query-version","id":1}"#);
        assert_eq!(r[0]["error"]["class"], "CommandNotFound");
        assert_eq!(
            r[0]["error"]["desc"],
            "Expecting capabilities negotiation with 'qmp_capabilities'"
        );
        assert_eq!(r[0]["id"], 1);
        assert!(!s.wants_events());
        let r = run(
            &mut s,
            r#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#,
        );
        assert_eq!(r[0], json!({"return": {}}));
        assert!(s.wants_events());
        let r = run(&mut s, r#"{"execute":"qmp_capabilities"}"#);
        assert_eq!(
            r[0]["error"]["desc"],
            "Capabilities negotiation is already complete, command ignored"
        );
        let r = run(
            &mut s,
            r#"{"exec-oob":"set_link","arguments":{"name":"x","up":true}}"#,
        );
        assert_eq!(
            r[0]["error"]["desc"],
            "The command set_link does not support OOB"
        );
    }

    #[test]
    fn request_rules() {
        let mut s = Session::new(COMMANDS);
        run(&mut s, r#"{"execute":"qmp_capabilities"}"#);
        let cases = [
            (r#"[]"#, "QMP input must be a JSON object"),
            (
                r#"{"execute":1}"#,
                "QMP input member 'execute' must be a string",
            ),
            (r#"{"arguments":{}}"#, "QMP input lacks member 'execute'"),
            (
                r#"{"execute":"quit","arguments":[]}"#,
                "QMP input member 'arguments' must be an object",
            ),
            (
                r#"{"execute":"quit","foo":1}"#,
                "QMP input member 'foo' is unexpected",
            ),
            (
                r#"{"exec-oob":"quit"}"#,
                "QMP input member 'exec-oob' is unexpected",
            ),
            (
                r#"{"execute":"nope"}"#,
                "The command nope has not been found",
            ),
            (
                r#"{"execute":"set_link","arguments":{"name":"a"}}"#,
                "Parameter 'up' is missing",
            ),
            (
                r#"{"execute":"set_link","arguments":{"name":"a","up":true}}"#,
                "Device 'a' not found",
            ),
        ];
        for (input, desc) in cases {
            let r = run(&mut s, input);
            assert_eq!(r.len(), 1, "{input}");
            assert_eq!(r[0]["error"]["desc"], desc, "{input}");
        }
        let r = run(&mut s, r#"{"execute":"query-commands","id":"x"}"#);
        assert!(r[0]["return"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "netdev_add"));
        assert_eq!(r[0]["id"], "x");
    }

    #[test]
    fn garbage_gets_an_error_and_the_session_goes_on() {
        let mut s = Session::new(COMMANDS);
        let r = run(&mut s, "\u{1}{\"execute\":\"qmp_capabilities\"}");
        assert_eq!(r.len(), 2);
        assert_eq!(r[1], json!({"return": {}}));
    }

    #[test]
    fn event_has_qemu_timestamp() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_368_697_518_326_866);
        assert_eq!(
            event_line("X", Some(json!({"a": 1})), t),
            "{\"event\": \"X\", \"data\": {\"a\": 1}, \"timestamp\": {\"seconds\": 1368697518, \"microseconds\": 326866}}\r\n"
        );
    }
}
