//! `calc`: a safe arithmetic evaluator agents can call — numbers, `+ - * / % ^`, parentheses and
//! a few functions, in f64. Small models are bad at arithmetic; a tool that cannot do anything
//! but arithmetic is the cheapest fix.
//!
//! Hand-written (a 100-line recursive-descent parser) rather than an expression crate: those are
//! small languages (variables, strings, integer division that surprises: 1/3 = 0), and a tool the
//! model calls should accept exactly arithmetic and say precisely where an expression is wrong.

wit_bindgen::generate!({ world: "tool", path: "../../wit", generate_all });

use exports::edgewise::agent::tool_api::{Guest, ToolError, ToolSpec};

struct Calc;

const MAX_LEN: usize = 1000;
const MAX_DEPTH: u32 = 64;

impl Guest for Calc {
    fn describe() -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: "calculate".into(),
            description: "Evaluate an arithmetic expression exactly: numbers, + - * / % ^, parentheses, sqrt, abs, min, max, round, floor, ceil, ln, log10, pi, e.".into(),
            parameters: r#"{"type":"object","properties":{"expression":{"type":"string","description":"For example (12.5 + 7) * 3 / 2"}},"required":["expression"],"additionalProperties":false}"#.into(),
        }]
    }

    fn invoke(name: String, args_json: String) -> Result<String, ToolError> {
        if name != "calculate" {
            return Err(ToolError::UnknownTool(name));
        }
        let args: serde_json::Value = serde_json::from_str(&args_json)
            .map_err(|e| ToolError::InvalidArguments(format!("arguments are not JSON: {e}")))?;
        let expr = args
            .get("expression")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ToolError::InvalidArguments("`expression` (a string) is required".into()))?;
        let value = evaluate(expr).map_err(ToolError::InvalidArguments)?;
        Ok(format_number(value))
    }
}

export!(Calc);

fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

pub fn evaluate(expr: &str) -> Result<f64, String> {
    if expr.len() > MAX_LEN {
        return Err(format!("the expression is longer than {MAX_LEN} characters"));
    }
    let mut p = Parser { s: expr.as_bytes(), pos: 0, depth: 0 };
    let v = p.sum()?;
    p.skip_ws();
    if p.pos < p.s.len() {
        return Err(p.error("an operator or the end of the expression"));
    }
    if !v.is_finite() {
        return Err("the result is not a finite number (division by zero or overflow)".into());
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    depth: u32,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    fn error(&self, expected: &str) -> String {
        match self.s.get(self.pos) {
            Some(c) => format!("at character {}: expected {expected}, found '{}'", self.pos + 1, *c as char),
            None => format!("at the end: expected {expected}"),
        }
    }

    fn sum(&mut self) -> Result<f64, String> {
        let mut v = self.product()?;
        while let Some(op @ (b'+' | b'-')) = self.peek() {
            self.pos += 1;
            let r = self.product()?;
            v = if op == b'+' { v + r } else { v - r };
        }
        Ok(v)
    }

    fn product(&mut self) -> Result<f64, String> {
        let mut v = self.power()?;
        while let Some(op @ (b'*' | b'/' | b'%')) = self.peek() {
            self.pos += 1;
            let r = self.power()?;
            v = match op {
                b'*' => v * r,
                b'/' => v / r,
                _ => v % r,
            };
        }
        Ok(v)
    }

    fn power(&mut self) -> Result<f64, String> {
        let base = self.unary()?;
        if self.peek() == Some(b'^') {
            self.pos += 1;
            // Right-associative: 2^3^2 = 2^9.
            let exp = self.power()?;
            return Ok(base.powf(exp));
        }
        Ok(base)
    }

    fn unary(&mut self) -> Result<f64, String> {
        match self.peek() {
            Some(b'-') => {
                self.pos += 1;
                Ok(-self.unary()?)
            }
            Some(b'+') => {
                self.pos += 1;
                self.unary()
            }
            _ => self.atom(),
        }
    }

    fn atom(&mut self) -> Result<f64, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("the expression nests deeper than {MAX_DEPTH} levels"));
        }
        let v = match self.peek() {
            Some(b'(') => {
                self.pos += 1;
                let v = self.sum()?;
                self.expect(b')')?;
                v
            }
            Some(c) if c.is_ascii_digit() || c == b'.' => self.number()?,
            Some(c) if c.is_ascii_alphabetic() => self.call()?,
            _ => return Err(self.error("a number, '(' or a function")),
        };
        self.depth -= 1;
        Ok(v)
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(&format!("'{}'", c as char)))
        }
    }

    fn number(&mut self) -> Result<f64, String> {
        let start = self.pos;
        while self.pos < self.s.len()
            && (self.s[self.pos].is_ascii_digit() || matches!(self.s[self.pos], b'.' | b'e' | b'E')
                || (matches!(self.s[self.pos], b'+' | b'-') && matches!(self.s[self.pos - 1], b'e' | b'E')))
        {
            self.pos += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("");
        text.parse()
            .map_err(|_| format!("at character {}: '{text}' is not a number", start + 1))
    }

    fn call(&mut self) -> Result<f64, String> {
        let start = self.pos;
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_alphanumeric() {
            self.pos += 1;
        }
        let name = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("").to_ascii_lowercase();
        match name.as_str() {
            "pi" => return Ok(std::f64::consts::PI),
            "e" => return Ok(std::f64::consts::E),
            _ => {}
        }
        self.expect(b'(')?;
        let mut args = vec![self.sum()?];
        while self.peek() == Some(b',') {
            self.pos += 1;
            args.push(self.sum()?);
        }
        self.expect(b')')?;
        let one = |f: fn(f64) -> f64| -> Result<f64, String> {
            match args[..] {
                [x] => Ok(f(x)),
                _ => Err(format!("{name}() takes one argument, got {}", args.len())),
            }
        };
        match name.as_str() {
            "sqrt" => one(f64::sqrt),
            "abs" => one(f64::abs),
            "round" => one(f64::round),
            "floor" => one(f64::floor),
            "ceil" => one(f64::ceil),
            "ln" => one(f64::ln),
            "log10" => one(f64::log10),
            "min" => Ok(args.iter().copied().fold(f64::INFINITY, f64::min)),
            "max" => Ok(args.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
            _ => Err(format!(
                "at character {}: unknown function '{name}' (sqrt, abs, min, max, round, floor, ceil, ln, log10)",
                start + 1
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::evaluate;

    #[test]
    fn arithmetic() {
        assert_eq!(evaluate("(12.5 + 7) * 3 / 2").unwrap(), 29.25);
        assert_eq!(evaluate("2^3^2").unwrap(), 512.0);
        assert_eq!(evaluate("-3 + max(1, 4, 2) % 3").unwrap(), -2.0);
        assert_eq!(evaluate("1.5e3 + sqrt(16)").unwrap(), 1504.0);
        assert!(evaluate("1/0").is_err());
        assert!(evaluate("2 +").unwrap_err().contains("at the end"));
        assert!(evaluate("2 $ 3").unwrap_err().contains("character 3"));
        assert!(evaluate(&"(".repeat(100)).unwrap_err().contains("deeper"));
    }
}
