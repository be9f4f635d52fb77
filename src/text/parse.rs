//! The parser: IR text to a [`Graph`], in three steps.
//!
//! 1. Syntax (recursive descent over the [`lexer`](super::lexer) tokens): header, sections,
//!    one statement per line. Ops, attributes and initializers are built here through the
//!    tables in [`attrs`](super::attrs) (`Op::from_attrs`, `Init::from_args`).
//! 2. Names: every `%ID` is defined once; nodes are created in text order, then operands,
//!    `grad(..)`, outputs and updates are resolved (forward references are allowed).
//! 3. Checks: the verifier ([`crate::verify`], the one set of graph invariants: operand
//!    counts, every node's declared type against `Op::infer`, no cycle, literals, updates
//!    well-typed), with the nodes named as written.
//!
//! Errors carry the line and column of the token they are about (an inference error points
//! at the op, a type mismatch at the declared type). Each step reports every error it finds
//! (step 1 goes on at the next line after a syntax error), in file order, at most
//! [`MAX_PARSE_ERRORS`](super::MAX_PARSE_ERRORS); a step runs only when the steps before it
//! found nothing. The parser never panics: tokens are read with bounds-checked accessors,
//! numbers are range-checked before they reach shape arithmetic.

use super::attrs::{AttrError, AttrValue, MAX_DIM};
use super::lexer::{lex, Tok, Token};
use super::print::Section;
use super::ParseError;
use crate::graph::{is_valid_name, Graph, Node, NodeId, SourceLoc};
use crate::op::{Init, Literal, Op, MAX_ELEMENTS};
use crate::shape::{DType, Shape, TensorType};
use crate::verify::Check;
use std::collections::HashMap;

/// Parses IR text into a graph. `file` names the source in errors and in the source location
/// of nodes that have no `# at` comment.
pub fn parse(src: &str, file: &str) -> Result<Graph, ParseError> {
    let toks = lex(src, file)?;
    let ast = Parser { toks, pos: 0, file }.graph()?;
    Builder::new(file, &ast).build()
}

/// A position in the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pos {
    line: u32,
    col: u32,
}

/// A `%ID` reference as written.
#[derive(Clone, Debug)]
struct Ref {
    label: String,
    pos: Pos,
}

/// A `key=value` attribute or initializer argument and where its key is.
type Attr = (String, AttrValue, Pos);

/// `%ID: TYPE = OP ...` after step 1.
#[derive(Debug)]
struct NodeStmt {
    def: Ref,
    ty: TensorType,
    ty_pos: Pos,
    op: Op,
    op_pos: Pos,
    operands: Vec<Ref>,
    grad: Option<Ref>,
    loc: Option<SourceLoc>,
}

/// `NAME = %ID`
#[derive(Debug)]
struct OutputStmt {
    name: String,
    pos: Pos,
    value: Ref,
}

/// `%TARGET <- %VALUE`
#[derive(Debug)]
struct UpdateStmt {
    target: Ref,
    value: Ref,
}

/// The syntax of a whole file.
#[derive(Debug)]
struct Ast {
    name: String,
    nodes: Vec<NodeStmt>,
    outputs: Vec<OutputStmt>,
    updates: Vec<UpdateStmt>,
}

const SECTIONS: [&str; 6] = ["inputs", "params", "state", "body", "outputs", "updates"];

// ---- step 1: syntax --------------------------------------------------------------------------

struct Parser<'a> {
    toks: Vec<Token>,
    pos: usize,
    file: &'a str,
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        self.peek_at(0)
    }

    fn peek_at(&self, k: usize) -> &Tok {
        self.toks.get(self.pos + k).map_or(&Tok::Eof, |t| &t.tok)
    }

    fn here(&self) -> Pos {
        match self.toks.get(self.pos).or(self.toks.last()) {
            Some(t) => Pos {
                line: t.line,
                col: t.col,
            },
            None => Pos { line: 1, col: 1 },
        }
    }

    /// Consumes and returns the current token (`Eof` forever at the end).
    fn bump(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.pos < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn err(&self, pos: Pos, message: String) -> ParseError {
        ParseError::new(self.file, pos.line, pos.col, message)
    }

    /// "expected WHAT, found TOKEN" at the current token.
    fn expected(&self, what: &str) -> ParseError {
        self.err(
            self.here(),
            format!("expected {what}, found {}", self.peek().describe()),
        )
    }

    fn punct(&mut self, c: char, what: &str) -> Result<(), ParseError> {
        if *self.peek() == Tok::Punct(c) {
            self.bump();
            Ok(())
        } else {
            Err(self.expected(what))
        }
    }

    fn ident(&mut self, what: &str) -> Result<(String, Pos), ParseError> {
        let pos = self.here();
        match self.peek() {
            Tok::Ident(s) => {
                let s = s.clone();
                self.bump();
                Ok((s, pos))
            }
            _ => Err(self.expected(what)),
        }
    }

    /// A `%ID` reference: `%NAME` or `%N`.
    fn value_ref(&mut self, what: &str) -> Result<Ref, ParseError> {
        let pos = self.here();
        let Tok::Value(label) = self.peek() else {
            return Err(self.expected(what));
        };
        let label = label.clone();
        let anonymous = label.chars().all(|c| c.is_ascii_digit());
        if !anonymous && !is_valid_name(&label) {
            return Err(self.err(
                pos,
                format!(
                    "bad value name `%{label}`: expected `%NAME` (a letter or `_`, then letters, \
                     digits, `_` or `.`) or `%NUMBER`"
                ),
            ));
        }
        self.bump();
        Ok(Ref { label, pos })
    }

    fn skip_blank_lines(&mut self) {
        while matches!(self.peek(), Tok::Newline | Tok::Loc(_)) {
            self.bump();
        }
    }

    /// The end of a statement: an optional `# at` comment, then a newline (or the end of the
    /// file, or a `}` that closes the graph). `what` lists what else could have come.
    fn end_of_line(&mut self, what: &str) -> Result<Option<SourceLoc>, ParseError> {
        let loc = match self.peek() {
            Tok::Loc(l) => {
                let l = l.clone();
                self.bump();
                Some(l)
            }
            _ => None,
        };
        match self.peek() {
            Tok::Newline => {
                self.bump();
                Ok(loc)
            }
            Tok::Eof | Tok::Punct('}') => Ok(loc),
            _ => Err(self.expected(&format!("{what}end of line"))),
        }
    }

    /// `graph NAME { sections }`
    fn graph(&mut self) -> Result<Ast, ParseError> {
        self.skip_blank_lines();
        if *self.peek() != Tok::Ident("graph".into()) {
            return Err(self.expected("`graph NAME {` at the start of the file"));
        }
        self.bump();
        let (name, _) = self.ident("a graph name after `graph`")?;
        let open = self.here();
        self.punct('{', "`{` after the graph name")?;
        self.end_of_line("")?;
        let mut ast = Ast {
            name,
            nodes: Vec::new(),
            outputs: Vec::new(),
            updates: Vec::new(),
        };
        let mut section: Option<usize> = None;
        // errors of statement lines: each line is independent, so after an error the parser
        // goes on at the next line and reports them all (up to MAX_PARSE_ERRORS)
        let mut errors: Vec<ParseError> = Vec::new();
        // after a bad section header or a statement outside any section, the lines up to
        // the next good header have no known section: they are skipped, not reported (their
        // errors would follow from that one)
        let mut lost = false;
        loop {
            self.skip_blank_lines();
            let start = self.pos;
            let line = match self.peek() {
                Tok::Punct('}') => {
                    self.bump();
                    break;
                }
                Tok::Eof => {
                    errors.push(self.expected(&format!(
                        "`}}` to close graph `{}` (opened at {}:{})",
                        ast.name, open.line, open.col
                    )));
                    break;
                }
                Tok::Ident(_) if *self.peek_at(1) == Tok::Punct(':') => {
                    let header = self.section_header(section);
                    lost = header.is_err();
                    header.map(|s| section = Some(s))
                }
                _ if lost => {
                    self.skip_statement(start);
                    continue;
                }
                _ => match section.and_then(|s| SECTIONS.get(s)) {
                    Some(&"outputs") => self.output().map(|o| ast.outputs.push(o)),
                    Some(&"updates") => self.update().map(|u| ast.updates.push(u)),
                    Some(&name) => self.node().and_then(|stmt| {
                        check_section(self, name, &stmt)?;
                        ast.nodes.push(stmt);
                        Ok(())
                    }),
                    None => {
                        lost = true;
                        Err(self.expected(
                            "a section header (`inputs:`, `params:`, `state:`, `body:`, \
                             `outputs:` or `updates:`)",
                        ))
                    }
                },
            };
            if let Err(e) = line {
                errors.push(e);
                if errors.len() >= crate::text::MAX_PARSE_ERRORS {
                    break;
                }
                self.skip_statement(start);
                if *self.peek() == Tok::Eof {
                    // a statement cut off by the end of the file: the missing `}` follows
                    break;
                }
            }
        }
        if errors.is_empty() {
            self.skip_blank_lines();
            if *self.peek() != Tok::Eof {
                errors.push(self.expected("end of file after the `}` that closes the graph"));
            }
        }
        in_file_order(errors).map(|()| ast)
    }

    /// Recovery after an error in the statement that starts at token `start`: goes on after
    /// its line, or after the line that closes a `{` block the statement opened (a fused
    /// body), so that the block's lines are not read as statements of their own.
    fn skip_statement(&mut self, start: usize) {
        self.pos = start;
        let mut depth = 0usize;
        loop {
            match self.bump() {
                Tok::Eof => return,
                Tok::Punct('{') => depth += 1,
                Tok::Punct('}') => depth = depth.saturating_sub(1),
                Tok::Newline if depth == 0 => return,
                _ => {}
            }
        }
    }

    /// `NAME:` on its own line; returns the section's index in [`SECTIONS`].
    fn section_header(&mut self, previous: Option<usize>) -> Result<usize, ParseError> {
        let (name, pos) = self.ident("a section name")?;
        let Some(index) = SECTIONS.iter().position(|&s| s == name) else {
            if !matches!(self.peek_at(1), Tok::Newline | Tok::Eof | Tok::Loc(_)) {
                return Err(self.err(
                    pos,
                    format!("expected a node definition or a section header, found `{name}:` (value names start with `%`)"),
                ));
            }
            return Err(self.err(
                pos,
                format!(
                    "unknown section `{name}`: expected one of {}",
                    SECTIONS.join(", ")
                ),
            ));
        };
        if let Some(prev) = previous.filter(|&p| p >= index) {
            let message = if prev == index {
                format!("duplicate section `{name}`")
            } else {
                format!(
                    "section `{name}` must come before `{}` (order: {})",
                    SECTIONS[prev],
                    SECTIONS.join(", ")
                )
            };
            return Err(self.err(pos, message));
        }
        self.punct(':', "`:` after the section name")?;
        self.end_of_line("")?;
        Ok(index)
    }

    /// `%ID: TYPE = OP ... [grad(%G)] [# at LOC]`
    fn node(&mut self) -> Result<NodeStmt, ParseError> {
        let def = self.value_ref("a node definition `%NAME: TYPE = OP ...`")?;
        self.punct(':', "`:` after the value name")?;
        let ty_pos = self.here();
        let ty = self.ty()?;
        self.punct('=', "`=` after the type")?;
        let (op_name, op_pos) = self.ident("an op name")?;
        let mut operands = Vec::new();
        let op = match op_name.as_str() {
            "input" => Op::Input,
            "param" => Op::Param { init: self.init()? },
            "state" => Op::State { init: self.init()? },
            "const" => Op::Const {
                value: self.literal()?,
            },
            "fused" => {
                let (ops, attrs) = self.operands_and_attrs()?;
                if let Some((k, _, pos)) = attrs.first() {
                    return Err(self.err(*pos, format!("fused takes no attributes, found `{k}`")));
                }
                let n_params = ops.len();
                operands = ops;
                Op::Fused(self.fused_body(n_params)?)
            }
            "scan" => {
                let (ops, attrs) = self.operands_and_attrs()?;
                let n_params = ops.len();
                operands = ops;
                Op::Scan(self.scan_body(n_params, &attrs, op_pos)?)
            }
            _ => {
                if Op::attr_names(&op_name).is_none() {
                    return Err(self.err(op_pos, unknown_op_message(&op_name)));
                }
                let (ops, attrs) = self.operands_and_attrs()?;
                operands = ops;
                let plain: Vec<(String, AttrValue)> = attrs
                    .iter()
                    .map(|(k, v, _)| (k.clone(), v.clone()))
                    .collect();
                Op::from_attrs(&op_name, &plain)
                    .map_err(|e| self.attr_error(e, &op_name, "op", "attribute", op_pos, &attrs))?
            }
        };
        if let (true, Tok::Value(_)) = (op.is_leaf(), self.peek()) {
            return Err(self.err(
                self.here(),
                format!(
                    "{op_name} takes no operands, found {}",
                    self.peek().describe()
                ),
            ));
        }
        let grad = if *self.peek() == Tok::Ident("grad".into()) {
            self.bump();
            self.punct('(', "`(` after `grad`")?;
            let r = self.value_ref("the forward value in `grad(%ID)`")?;
            self.punct(')', "`)` to close `grad(`")?;
            Some(r)
        } else {
            None
        };
        let more = if op.is_leaf() { "" } else { "`,`, " };
        let loc = self.end_of_line(&format!("{more}`grad(%ID)` or "))?;
        Ok(NodeStmt {
            def,
            ty,
            ty_pos,
            op,
            op_pos,
            operands,
            grad,
            loc,
        })
    }

    /// `{ NEWLINE (%K: TYPE = OP args NEWLINE)* yield %R NEWLINE }` after `fused OPERANDS`:
    /// values are numbered operands first (`%0..`), then one per instruction in order, and
    /// `yield` names the last instruction (then, for a multi-result body, further results).
    fn fused_body(&mut self, n_params: usize) -> Result<crate::fused::FusedBody, ParseError> {
        let (insts, yields) = self.block(n_params, "fused")?;
        let last = n_params + insts.len();
        let Some(&(main, pos)) = yields.first() else {
            return Err(self.expected("a result after `yield`"));
        };
        if insts.is_empty() || main != last - 1 {
            return Err(self.err(
                pos,
                format!(
                    "`yield` must name the last instruction of the body (`%{}`), found `%{main}`",
                    last.saturating_sub(1)
                ),
            ));
        }
        Ok(crate::fused::FusedBody {
            n_params,
            insts,
            extra: yields[1..].iter().map(|&(v, _)| v).collect(),
        })
    }

    /// The block of `scan OPERANDS, axis=A, carries=C, reverse=R, sequences=S`: as a fused body, but
    /// `yield` lists the new carries, then the per-step outputs (any values of the body).
    fn scan_body(
        &mut self,
        n_params: usize,
        attrs: &[Attr],
        op_pos: Pos,
    ) -> Result<crate::scan::ScanBody, ParseError> {
        let plain: Vec<(String, AttrValue)> = attrs
            .iter()
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect();
        let (axis, carries, sequences, reverse) = Op::scan_attrs(&plain)
            .map_err(|e| self.attr_error(e, "scan", "op", "attribute", op_pos, attrs))?;
        let (insts, yields) = self.block(n_params, "scan")?;
        Ok(crate::scan::ScanBody {
            params: n_params,
            carries,
            sequences,
            reverse,
            axis,
            insts,
            yields: yields.into_iter().map(|(v, _)| v).collect(),
        })
    }

    /// `{ NEWLINE (%K: TYPE = OP args NEWLINE)* yield %A, %B.. NEWLINE }`: the instructions of
    /// a nested block over `n_params` parameters and its yielded values (with positions).
    /// An instruction may itself be a `fused` or `scan` with a block of its own.
    #[allow(clippy::type_complexity)]
    fn block(
        &mut self,
        n_params: usize,
        what: &str,
    ) -> Result<(Vec<crate::fused::FusedInst>, Vec<(usize, Pos)>), ParseError> {
        let open = self.here();
        self.punct('{', &format!("`{{` to open the body of `{what}`"))?;
        let mut insts = Vec::new();
        loop {
            self.skip_blank_lines();
            if *self.peek() == Tok::Ident("yield".into()) {
                self.bump();
                let last = n_params + insts.len();
                let mut yields = Vec::new();
                loop {
                    let e = match yields.is_empty() {
                        true => self.value_ref("a result `%K` after `yield`")?,
                        false => self.value_ref("a further result `%K` after `,`")?,
                    };
                    match e.label.parse::<usize>() {
                        Ok(v) if v < last => yields.push((v, e.pos)),
                        _ => {
                            return Err(self.err(
                                e.pos,
                                format!(
                                    "`%{}` is not a value of the body (`%0`..`%{}`)",
                                    e.label,
                                    last.saturating_sub(1)
                                ),
                            ))
                        }
                    }
                    if *self.peek() != Tok::Punct(',') {
                        break;
                    }
                    self.bump();
                }
                self.skip_blank_lines();
                self.punct(
                    '}',
                    &format!("`}}` to close the body of `{what}` after `yield`"),
                )?;
                return Ok((insts, yields));
            }
            if *self.peek() == Tok::Eof || *self.peek() == Tok::Punct('}') {
                return Err(self.expected(&format!(
                    "`yield %K` to end the body of `{what}` (opened at {}:{})",
                    open.line, open.col
                )));
            }
            let k = n_params + insts.len();
            let def = self.value_ref("a body instruction `%K: TYPE = OP ...` or `yield %K`")?;
            if def.label != k.to_string() {
                return Err(self.err(
                    def.pos,
                    format!(
                        "body values are numbered operands first, then instructions: expected `%{k}`, found `%{}`",
                        def.label
                    ),
                ));
            }
            self.punct(':', "`:` after the value name")?;
            let ty = self.ty()?;
            self.punct('=', "`=` after the type")?;
            let (op_name, op_pos) = self.ident("an op name")?;
            if matches!(op_name.as_str(), "input" | "param" | "state" | "const") {
                return Err(self.err(
                    op_pos,
                    format!(
                        "a `{what}` body holds no `{op_name}`: constants and weights are operands of the `{what}` node"
                    ),
                ));
            }
            let nested = op_name == "fused" || op_name == "scan";
            if !nested && Op::attr_names(&op_name).is_none() {
                return Err(self.err(op_pos, unknown_op_message(&op_name)));
            }
            let (refs, attrs) = self.operands_and_attrs()?;
            let mut args = Vec::new();
            for r in refs {
                match r.label.parse::<usize>() {
                    Ok(a) if a < k => args.push(a),
                    _ => {
                        return Err(self.err(
                            r.pos,
                            format!(
                            "`%{}` is not a value of the body defined before `%{k}` (`%0`..`%{}`)",
                            r.label,
                            k.saturating_sub(1)
                        ),
                        ))
                    }
                }
            }
            let op = match op_name.as_str() {
                "fused" => {
                    if let Some((key, _, pos)) = attrs.first() {
                        return Err(
                            self.err(*pos, format!("fused takes no attributes, found `{key}`"))
                        );
                    }
                    Op::Fused(self.fused_body(args.len())?)
                }
                "scan" => Op::Scan(self.scan_body(args.len(), &attrs, op_pos)?),
                _ => {
                    let plain: Vec<(String, AttrValue)> = attrs
                        .iter()
                        .map(|(k, v, _)| (k.clone(), v.clone()))
                        .collect();
                    Op::from_attrs(&op_name, &plain).map_err(|e| {
                        self.attr_error(e, &op_name, "op", "attribute", op_pos, &attrs)
                    })?
                }
            };
            if !op.arity().accepts(args.len()) {
                return Err(self.err(
                    op_pos,
                    format!(
                        "wrong number of operands: {op_name} takes {}, found {}",
                        op.arity(),
                        args.len()
                    ),
                ));
            }
            match self.peek() {
                Tok::Newline => {
                    self.bump();
                }
                _ => return Err(self.expected("`,` or end of line")),
            }
            insts.push(crate::fused::FusedInst { op, args, ty });
        }
    }

    /// `f32[2,3]`
    fn ty(&mut self) -> Result<TensorType, ParseError> {
        let pos = self.here();
        let Tok::Ident(name) = self.peek() else {
            return Err(self.expected("a type like `f32[2,3]`"));
        };
        let Some(dtype) = DType::from_name(name) else {
            return Err(self.err(
                pos,
                format!("unknown element type `{name}`: expected f32 or i32"),
            ));
        };
        self.bump();
        self.punct('[', "`[` after the element type (a scalar is `f32[]`)")?;
        let mut dims = Vec::new();
        if *self.peek() != Tok::Punct(']') {
            loop {
                dims.push(self.dim()?);
                match self.peek() {
                    Tok::Punct(',') => {
                        self.bump();
                    }
                    Tok::Punct(']') => break,
                    _ => return Err(self.expected("`,` or `]` in the shape")),
                }
            }
        }
        self.bump(); // `]`
        let ty = TensorType::new(dtype, Shape(dims));
        if ty.shape.checked_numel().is_none_or(|n| n > MAX_ELEMENTS) {
            return Err(self.err(
                pos,
                format!("type {ty} has more than {MAX_ELEMENTS} elements"),
            ));
        }
        Ok(ty)
    }

    /// A dimension: an integer in `0..=MAX_DIM`.
    fn dim(&mut self) -> Result<usize, ParseError> {
        let pos = self.here();
        let Tok::Number(s) = self.peek() else {
            return Err(self.expected("a dimension (a non-negative integer)"));
        };
        match s.parse::<usize>() {
            Ok(d) if d <= MAX_DIM => {
                self.bump();
                Ok(d)
            }
            _ => Err(self.err(
                pos,
                format!("bad dimension `{s}`: expected an integer in 0..={MAX_DIM}"),
            )),
        }
    }

    /// A number (`3`, `-0.5`, `1e-7`, `NaN`, `inf`, `-inf`) as an attribute value.
    fn number(&mut self, what: &str) -> Result<AttrValue, ParseError> {
        let pos = self.here();
        let v = match self.peek() {
            Tok::Number(s) => match s.parse::<i128>() {
                Ok(i) => AttrValue::Int(i),
                Err(_) => match s.parse::<f64>() {
                    Ok(x) => AttrValue::Float(x),
                    Err(_) => return Err(self.err(pos, format!("bad number `{s}`"))),
                },
            },
            Tok::Ident(s) if s == "NaN" || s == "inf" => {
                AttrValue::Float(if s == "NaN" { f64::NAN } else { f64::INFINITY })
            }
            _ => return Err(self.expected(what)),
        };
        self.bump();
        Ok(v)
    }

    /// An attribute value: a number, an identifier or a flat list `[a, b]`.
    fn attr_value(&mut self) -> Result<AttrValue, ParseError> {
        match self.peek() {
            Tok::Ident(s) if s != "NaN" && s != "inf" => {
                let s = s.clone();
                self.bump();
                Ok(AttrValue::Ident(s))
            }
            Tok::Punct('[') => {
                self.bump();
                let mut items = Vec::new();
                if *self.peek() != Tok::Punct(']') {
                    loop {
                        items.push(match self.peek() {
                            Tok::Ident(s) if s != "NaN" && s != "inf" => {
                                let v = AttrValue::Ident(s.clone());
                                self.bump();
                                v
                            }
                            _ => self.number("a number or identifier in the list")?,
                        });
                        match self.peek() {
                            Tok::Punct(',') => {
                                self.bump();
                            }
                            Tok::Punct(']') => break,
                            _ => return Err(self.expected("`,` or `]` in the list")),
                        }
                    }
                }
                self.bump(); // `]`
                Ok(AttrValue::List(items))
            }
            _ => self.number("an attribute value (a number, an identifier or a list `[..]`)"),
        }
    }

    /// `key=value`
    fn key_value(&mut self) -> Result<Attr, ParseError> {
        let (key, pos) = self.ident("an attribute `key=value`")?;
        self.punct('=', "`=` after the attribute name")?;
        let value = self.attr_value()?;
        Ok((key, value, pos))
    }

    /// `%a, %b, key=value, ...` (operands first, then attributes; may be empty).
    fn operands_and_attrs(&mut self) -> Result<(Vec<Ref>, Vec<Attr>), ParseError> {
        let mut operands = Vec::new();
        let mut attrs = Vec::new();
        let starts_item = |p: &Self| {
            matches!(p.peek(), Tok::Value(_))
                || (matches!(p.peek(), Tok::Ident(_)) && *p.peek_at(1) == Tok::Punct('='))
        };
        if !starts_item(self) {
            return Ok((operands, attrs));
        }
        loop {
            if let Tok::Value(_) = self.peek() {
                if !attrs.is_empty() {
                    return Err(self.err(
                        self.here(),
                        format!(
                            "operand {} comes after an attribute: operands must come first",
                            self.peek().describe()
                        ),
                    ));
                }
                operands.push(self.value_ref("an operand")?);
            } else {
                attrs.push(self.key_value()?);
            }
            if *self.peek() != Tok::Punct(',') {
                return Ok((operands, attrs));
            }
            self.bump();
            if !starts_item(self) {
                return Err(self.expected("an operand `%ID` or an attribute `key=value` after `,`"));
            }
        }
    }

    /// `zeros` or `uniform(high=0.05, low=-0.05, seed=3)`
    fn init(&mut self) -> Result<Init, ParseError> {
        let pos = self.here();
        let Tok::Ident(name) = self.peek() else {
            return Err(self.expected("an initializer like `zeros` or `glorot_uniform(seed=1)`"));
        };
        let name = name.clone();
        if Init::arg_names(&name).is_none() {
            return Err(self.err(
                pos,
                format!(
                    "unknown initializer `{name}`: expected zeros, ones, constant(value=..), \
                     uniform(high=.., low=.., seed=..), normal(mean=.., seed=.., stddev=..), \
                     glorot_uniform(seed=..) or he_normal(seed=..)"
                ),
            ));
        }
        self.bump();
        let mut args = Vec::new();
        if *self.peek() == Tok::Punct('(') {
            self.bump();
            if *self.peek() != Tok::Punct(')') {
                loop {
                    args.push(self.key_value()?);
                    match self.peek() {
                        Tok::Punct(',') => {
                            self.bump();
                        }
                        Tok::Punct(')') => break,
                        _ => return Err(self.expected("`,` or `)` in the initializer arguments")),
                    }
                }
            }
            self.bump(); // `)`
        }
        let plain: Vec<(String, AttrValue)> = args
            .iter()
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect();
        Init::from_args(&name, &plain)
            .map_err(|e| self.attr_error(e, &name, "initializer", "argument", pos, &args))
    }

    /// `0.5` or `[1.0, 2.0]`
    fn literal(&mut self) -> Result<Literal, ParseError> {
        let what = "a number or a list of numbers `[..]` after `const`";
        if *self.peek() != Tok::Punct('[') {
            return Ok(Literal::Splat(self.float(what)?));
        }
        self.bump();
        let mut values = Vec::new();
        if *self.peek() != Tok::Punct(']') {
            loop {
                values.push(self.float("a number in the constant list")?);
                match self.peek() {
                    Tok::Punct(',') => {
                        self.bump();
                    }
                    Tok::Punct(']') => break,
                    _ => return Err(self.expected("`,` or `]` in the constant list")),
                }
            }
        }
        self.bump(); // `]`
        Ok(Literal::Dense(values))
    }

    fn float(&mut self, what: &str) -> Result<f64, ParseError> {
        match self.number(what)? {
            AttrValue::Int(i) => Ok(i as f64),
            AttrValue::Float(x) => Ok(x),
            _ => Err(self.expected(what)),
        }
    }

    /// `NAME = %ID`
    fn output(&mut self) -> Result<OutputStmt, ParseError> {
        let (name, pos) = self.ident("an output `NAME = %ID`")?;
        self.punct('=', "`=` after the output name")?;
        let value = self.value_ref("the output value `%ID`")?;
        self.end_of_line("")?;
        Ok(OutputStmt { name, pos, value })
    }

    /// `%TARGET <- %VALUE`
    fn update(&mut self) -> Result<UpdateStmt, ParseError> {
        let target = self.value_ref("an update `%TARGET <- %VALUE`")?;
        if *self.peek() != Tok::Arrow {
            return Err(self.expected("`<-` after the update target"));
        }
        self.bump();
        let value = self.value_ref("the update value `%ID`")?;
        self.end_of_line("")?;
        Ok(UpdateStmt { target, value })
    }

    /// Turns an attribute-table error into a positioned parse error. `what` is "op" or
    /// "initializer", `part` is "attribute" or "argument".
    fn attr_error(
        &self,
        e: AttrError,
        name: &str,
        what: &str,
        part: &str,
        name_pos: Pos,
        attrs: &[Attr],
    ) -> ParseError {
        let pos_of = |key: &str| {
            attrs
                .iter()
                .rev()
                .find(|(k, _, _)| k == key)
                .map_or(name_pos, |(_, _, p)| *p)
        };
        match e {
            AttrError::UnknownName => self.err(name_pos, format!("unknown {what} `{name}`")),
            AttrError::Unknown { key, expected } => {
                let list = if expected.is_empty() {
                    format!("{name} has no {part}s")
                } else {
                    format!("expected {}", expected.join(", "))
                };
                self.err(
                    pos_of(&key),
                    format!("unknown {part} `{key}` of {what} {name} ({list})"),
                )
            }
            AttrError::Duplicate { key } => self.err(
                pos_of(&key),
                format!("{part} `{key}` of {what} {name} is given twice"),
            ),
            AttrError::Missing { key } => {
                self.err(name_pos, format!("{what} {name} is missing {part} `{key}`"))
            }
            AttrError::Bad { key, message } => self.err(
                pos_of(&key),
                format!("bad value for {part} `{key}` of {what} {name}: {message}"),
            ),
        }
    }
}

/// Leaf ops must sit in their section; everything else in `body:`.
fn check_section(p: &Parser<'_>, section: &str, stmt: &NodeStmt) -> Result<(), ParseError> {
    let home = match stmt.op {
        Op::Input => Section::Inputs,
        Op::Param { .. } => Section::Params,
        Op::State { .. } => Section::State,
        _ => Section::Body,
    };
    if home.name() == section {
        return Ok(());
    }
    Err(p.err(
        stmt.op_pos,
        format!(
            "`{}` nodes belong in the `{}:` section, not in `{section}:`",
            stmt.op.name(),
            home.name()
        ),
    ))
}

/// "unknown op `x`", with a suggestion when a known op name is close.
fn unknown_op_message(name: &str) -> String {
    let close = crate::op::all_op_names()
        .map(|n| (edit_distance(name, n), n))
        .filter(|&(d, _)| d <= 2)
        .min();
    match close {
        Some((_, n)) => format!("unknown op `{name}` (did you mean `{n}`?)"),
        None => format!("unknown op `{name}`"),
    }
}

/// Levenshtein distance (for suggestions; names are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

// ---- steps 2 and 3: names and checks -----------------------------------------------------------

struct Builder<'a> {
    file: &'a str,
    ast: &'a Ast,
    g: Graph,
    ids: HashMap<&'a str, NodeId>,
}

impl<'a> Builder<'a> {
    fn new(file: &'a str, ast: &'a Ast) -> Self {
        Builder {
            file,
            ast,
            g: Graph::new(ast.name.clone()),
            ids: HashMap::new(),
        }
    }

    fn err(&self, pos: Pos, message: String) -> ParseError {
        ParseError::new(self.file, pos.line, pos.col, message)
    }

    fn build(mut self) -> Result<Graph, ParseError> {
        let ast = self.ast;
        // Step 2: define every node (in text order), then resolve references; every error.
        let mut errors = Vec::new();
        let mut defs: HashMap<&str, Pos> = HashMap::new();
        let mut node_ids = Vec::with_capacity(ast.nodes.len());
        for s in &ast.nodes {
            if let Some(first) = defs.get(s.def.label.as_str()) {
                errors.push(self.err(
                    s.def.pos,
                    format!(
                        "`%{}` is defined twice (first at line {}, column {})",
                        s.def.label, first.line, first.col
                    ),
                ));
                node_ids.push(None);
                continue;
            }
            defs.insert(&s.def.label, s.def.pos);
            let named = !s.def.label.chars().all(|c| c.is_ascii_digit());
            let node = Node {
                op: s.op.clone(),
                ty: s.ty.clone(),
                name: named.then(|| s.def.label.clone()),
                loc: Some(s.loc.clone().unwrap_or_else(|| SourceLoc {
                    file: self.file.to_string(),
                    line: s.def.pos.line,
                    column: s.def.pos.col,
                })),
                grad_of: None,
            };
            let id = self.g.add_raw(node, &[]);
            self.ids.insert(&s.def.label, id);
            node_ids.push(Some(id));
        }
        let resolve = |r: &Ref, errors: &mut Vec<ParseError>| {
            let id = self.ids.get(r.label.as_str()).copied();
            if id.is_none() {
                errors.push(self.err(r.pos, format!("undefined value `%{}`", r.label)));
            }
            id
        };
        let mut operands = Vec::with_capacity(ast.nodes.len());
        let mut grads = Vec::with_capacity(ast.nodes.len());
        for s in &ast.nodes {
            let ops: Vec<Option<NodeId>> =
                s.operands.iter().map(|r| resolve(r, &mut errors)).collect();
            operands.push(ops.into_iter().collect::<Option<Vec<_>>>());
            grads.push(s.grad.as_ref().and_then(|r| resolve(r, &mut errors)));
        }
        let mut outputs: Vec<(String, NodeId)> = Vec::new();
        for o in &ast.outputs {
            let id = resolve(&o.value, &mut errors);
            if outputs.iter().any(|(n, _)| *n == o.name) {
                errors.push(self.err(o.pos, format!("duplicate output name `{}`", o.name)));
            }
            if let Some(id) = id {
                outputs.push((o.name.clone(), id));
            }
        }
        let mut updates: Vec<(NodeId, NodeId)> = Vec::new();
        for u in &ast.updates {
            let (t, v) = (
                resolve(&u.target, &mut errors),
                resolve(&u.value, &mut errors),
            );
            if let (Some(t), Some(v)) = (t, v) {
                updates.push((t, v));
            }
        }
        in_file_order(errors)?;
        for ((&id, ops), grad) in node_ids.iter().zip(&operands).zip(&grads) {
            if let (Some(id), Some(ops)) = (id, ops) {
                self.g.set_operands(id, ops);
                if let (Some(f), Some(n)) = (grad, self.g.get_mut(id)) {
                    n.grad_of = Some(*f);
                }
            }
        }
        for (name, id) in outputs {
            self.g.push_output(name, id);
        }
        for (target, value) in updates {
            self.g.push_update(target, value);
        }
        // Step 3: the verifier, every violation, each at the token it is about.
        let labels: HashMap<NodeId, String> = (ast.nodes.iter().zip(&node_ids))
            .filter_map(|(s, id)| Some(((*id)?, format!("%{}", s.def.label))))
            .collect();
        let Err(invalid) = crate::verify::verify_labeled(&self.g, &labels) else {
            return Ok(self.g);
        };
        let stmt: HashMap<NodeId, &NodeStmt> = (node_ids.iter().zip(&ast.nodes))
            .filter_map(|(id, s)| Some(((*id)?, s)))
            .collect();
        let errors: Vec<ParseError> = invalid
            .errors
            .into_iter()
            .map(|e| {
                let at_node = |pick: fn(&NodeStmt) -> Pos| {
                    e.node
                        .and_then(|id| stmt.get(&id))
                        .map_or(Pos { line: 1, col: 1 }, |s| pick(s))
                };
                let pos = match e.check {
                    Check::Operands | Check::Inference | Check::FusedResult | Check::Literal => {
                        at_node(|s| s.op_pos)
                    }
                    Check::DeclaredType => at_node(|s| s.ty_pos),
                    Check::Cycle | Check::Name | Check::GradOf => at_node(|s| s.def.pos),
                    Check::Output(i) => ast
                        .outputs
                        .get(i)
                        .map_or(Pos { line: 1, col: 1 }, |o| o.pos),
                    Check::Update(i) => {
                        (ast.updates.get(i)).map_or(Pos { line: 1, col: 1 }, |u| u.target.pos)
                    }
                };
                let message = match (e.check, e.node.and_then(|id| labels.get(&id))) {
                    (Check::Inference, Some(label)) => format!("{label}: {}", e.message),
                    _ => e.message,
                };
                self.err(pos, message)
            })
            .collect();
        in_file_order(errors).map(|()| self.g)
    }
}

/// `Ok` when `errors` is empty, else the first error in file order holding the next ones
/// (at most [`MAX_PARSE_ERRORS`](super::MAX_PARSE_ERRORS) in all) in `also`.
fn in_file_order(mut errors: Vec<ParseError>) -> Result<(), ParseError> {
    errors.sort_by_key(|e| (e.line, e.column));
    let mut errors = errors.into_iter();
    match errors.next() {
        None => Ok(()),
        Some(mut first) => {
            first.also = errors.take(crate::text::MAX_PARSE_ERRORS - 1).collect();
            Err(first)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_op_names() {
        assert_eq!(edit_distance("matmull", "matmul"), 1);
        assert_eq!(
            unknown_op_message("relux"),
            "unknown op `relux` (did you mean `relu`?)"
        );
        assert_eq!(unknown_op_message("frobnicate"), "unknown op `frobnicate`");
    }
}
