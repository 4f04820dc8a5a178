//! The iptables chain model: rules as argument lists, a parsed `iptables-save` dump, and
//! `iptables-restore` batches.
//!
//! Rules are compared as unquoted argument lists, so a rule we generate matches the same rule read
//! back from `iptables-save` as long as it is written in the canonical order `iptables-save` prints
//! (addresses with their prefix, matches before the target).

use crate::firewall::names::sha512_hex;
pub use crate::firewall::names::{go_quote, go_unquote};
use crate::firewall::tools::push_line;

/// Length of every reference chain name (`CNI-` + hex, or `CNI-DN-` + hex).
pub const CHAIN_NAME_LEN: usize = 28;

/// The reference's per-container chain name: the first 28 characters of `CNI-<prefix><sha512(network+id) hex>`.
pub fn chain_name(prefix: &str, network: &str, container_id: &str) -> String {
    let mut name = format!("CNI-{prefix}");
    let want = CHAIN_NAME_LEN.saturating_sub(name.len());
    name.push_str(&sha512_hex(&format!("{network}{container_id}"), want));
    name
}

/// The reference's rule comment `name: "<network>" id: "<containerID>"` (Go `%q` quoting).
pub fn format_comment(network: &str, container_id: &str) -> String {
    format!("name: {} id: {}", go_quote(network), go_quote(container_id))
}

/// One rule: the chain it lives in and its arguments (matches and target), unquoted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// The chain holding the rule.
    pub chain: String,
    /// The arguments after `-A <chain>`.
    pub args: Vec<String>,
}

impl Rule {
    /// A rule from its chain and arguments.
    pub fn new<I, S>(chain: &str, args: I) -> Rule
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Rule { chain: chain.to_string(), args: args.into_iter().map(Into::into).collect() }
    }

    /// The value following the last occurrence of `option` (e.g. `-j`, `--comment`).
    pub fn option(&self, option: &str) -> Option<&str> {
        let at = self.args.iter().rposition(|a| a == option)?;
        self.args.get(at + 1).map(String::as_str)
    }

    /// The chain or target this rule jumps to (`-j X`).
    pub fn target(&self) -> Option<&str> {
        self.option("-j")
    }

    /// The `-m comment --comment` text.
    pub fn comment(&self) -> Option<&str> {
        self.option("--comment")
    }

    /// The arguments in restore syntax, quoted as `iptables-save` quotes them.
    pub fn render_args(&self) -> String {
        self.args.iter().map(|a| quote_arg(a)).collect::<Vec<_>>().join(" ")
    }
}

/// Quotes one argument for restore input when it needs it, the way `iptables-save` does.
fn quote_arg(arg: &str) -> String {
    if !arg.is_empty() && !arg.chars().any(|c| c.is_whitespace() || c == '"' || c == '\\' || c == '\'') {
        return arg.to_string();
    }
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('"');
    for c in arg.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Splits a restore/save line into arguments, undoing `"…"` quoting and the backslash escapes inside it.
pub fn split_args(line: &str) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut in_arg = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            // As in iptables-restore, a backslash escapes only inside quotes.
            '\\' if quoted => {
                let next = chars.next().ok_or_else(|| format!("dangling backslash in {line:?}"))?;
                current.push(next);
            }
            '"' => {
                quoted = !quoted;
                in_arg = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_arg {
                    args.push(std::mem::take(&mut current));
                    in_arg = false;
                }
            }
            c => {
                current.push(c);
                in_arg = true;
            }
        }
    }
    if quoted {
        return Err(format!("unterminated quote in {line:?}"));
    }
    if in_arg {
        args.push(current);
    }
    Ok(args)
}

/// One table as `iptables-save -t <table>` printed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedTable {
    /// Every chain, built-in and user-defined, in dump order.
    pub chains: Vec<String>,
    /// Every rule, in dump order (rules of one chain keep their evaluation order).
    pub rules: Vec<Rule>,
}

impl SavedTable {
    /// Parses the section for `table` of an `iptables-save` dump; a dump without it is an empty table.
    pub fn parse(text: &str, table: &str) -> Result<SavedTable, String> {
        let mut saved = SavedTable::default();
        let mut current: Option<&str> = None;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            if let Some(name) = line.strip_prefix('*') {
                current = Some(name);
            } else if line == "COMMIT" {
                current = None;
            } else if current != Some(table) {
                continue;
            } else if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().ok_or_else(|| format!("empty chain line {line:?}"))?;
                saved.chains.push(name.to_string());
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let mut args = split_args(rest)?;
                if args.is_empty() {
                    return Err(format!("rule without chain {line:?}"));
                }
                let chain = args.remove(0);
                saved.rules.push(Rule { chain, args });
            } else {
                return Err(format!("unexpected line {line:?}"));
            }
        }
        Ok(saved)
    }

    /// Whether the chain exists.
    pub fn has_chain(&self, name: &str) -> bool {
        self.chains.iter().any(|c| c == name)
    }

    /// Whether this exact rule exists.
    pub fn contains(&self, rule: &Rule) -> bool {
        self.rules.iter().any(|r| r == rule)
    }

    /// The rules of one chain, in order.
    pub fn rules_in<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| r.chain == chain)
    }

    /// The rules, in any chain, that jump to `chain`.
    pub fn jumps_to<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| r.target() == Some(chain))
    }
}

/// An `iptables-restore --noflush` batch for one table, committed atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    table: String,
    lines: Vec<String>,
}

impl Batch {
    /// An empty batch for `table` (e.g. `nat`).
    pub fn new(table: &str) -> Batch {
        Batch { table: table.to_string(), lines: Vec::new() }
    }

    /// `:<chain> - [0:0]`: with `--noflush` this creates the chain, or flushes just it if it exists.
    pub fn declare_chain(&mut self, chain: &str) {
        self.lines.push(format!(":{chain} - [0:0]"));
    }

    /// `-N`: creates a chain, failing the batch if it exists (so a shared chain is never flushed).
    pub fn new_chain(&mut self, chain: &str) {
        self.lines.push(format!("-N {chain}"));
    }

    /// `-C`: fails the batch unless this rule exists, which turns a batch into a conditional write.
    pub fn check(&mut self, rule: &Rule) {
        self.lines.push(format!("-C {} {}", rule.chain, rule.render_args()));
    }

    /// `-A`: appends the rule to its chain.
    pub fn append(&mut self, rule: &Rule) {
        self.lines.push(format!("-A {} {}", rule.chain, rule.render_args()));
    }

    /// `-I <chain> <position>`: inserts the rule (position 1 is the head of the chain).
    pub fn insert(&mut self, rule: &Rule, position: usize) {
        self.lines.push(format!("-I {} {position} {}", rule.chain, rule.render_args()));
    }

    /// `-D`: deletes the first rule equal to this one (fails the batch if there is none).
    pub fn delete(&mut self, rule: &Rule) {
        self.lines.push(format!("-D {} {}", rule.chain, rule.render_args()));
    }

    /// `-F`: flushes a chain (fails the batch if it does not exist).
    pub fn flush_chain(&mut self, chain: &str) {
        self.lines.push(format!("-F {chain}"));
    }

    /// `-X`: deletes an empty, unreferenced chain (fails the batch if it does not exist).
    pub fn delete_chain(&mut self, chain: &str) {
        self.lines.push(format!("-X {chain}"));
    }

    /// Whether the batch would change nothing.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The restore input: `*<table>`, the commands, `COMMIT`. A control character inside a command
    /// (an argument holding a line break would start a new command) is written as NUL, which
    /// [`crate::firewall::tools::check_text`] refuses to run: the text of one command never becomes two.
    pub fn render(&self) -> String {
        let mut text = format!("*{}\n", self.table);
        for line in &self.lines {
            push_line(&mut text, line);
        }
        text.push_str("COMMIT\n");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::tools::{check_text, MAX_RESTORE_LINE};

    #[test]
    fn names_chains_like_the_reference() {
        assert_eq!(format_comment("specnet", "ctr1"), r#"name: "specnet" id: "ctr1""#);
        assert_eq!(chain_name("", "specnet", "ctr1"), "CNI-47b0c350c56dfce277c5b5d1");
        // Portmap's DNAT chain (research 3.4): 21 hex digits after `CNI-DN-`.
        assert_eq!(chain_name("DN-", "specnet", "ctr1"), "CNI-DN-47b0c350c56dfce277c5b");
    }

    #[test]
    fn splits_save_lines() {
        let args = split_args(r#"-s 10.0.0.2/32 -m comment --comment "name: \"n\" id: \"c\"" -j CNI-X"#).unwrap();
        assert_eq!(args, ["-s", "10.0.0.2/32", "-m", "comment", "--comment", r#"name: "n" id: "c""#, "-j", "CNI-X"]);
        assert_eq!(split_args(r#"--comment """#).unwrap(), ["--comment", ""]);
        assert!(split_args(r#"--comment "open"#).is_err());
    }

    #[test]
    fn renders_what_it_parses() {
        let line = r#"-d 10.0.0.0/24 -m comment --comment "name: \"n\" id: \"c\"" -j ACCEPT"#;
        let rule = Rule { chain: "CNI-X".into(), args: split_args(line).unwrap() };
        assert_eq!(rule.render_args(), line);
        assert_eq!(rule.comment(), Some(r#"name: "n" id: "c""#));
        assert_eq!(rule.target(), Some("ACCEPT"));
    }

    #[test]
    fn parses_a_dump() {
        let dump = "# Generated by iptables-save v1.8.9 (nf_tables)\n*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j DROP\n\
                    COMMIT\n*nat\n:POSTROUTING ACCEPT [0:0]\n:CNI-X - [0:0]\n-A POSTROUTING -s 10.0.0.2/32 -j CNI-X\n\
                    -A CNI-X -j MASQUERADE\nCOMMIT\n# Completed\n";
        let nat = SavedTable::parse(dump, "nat").unwrap();
        assert_eq!(nat.chains, ["POSTROUTING", "CNI-X"]);
        assert_eq!(nat.rules.len(), 2);
        assert!(nat.has_chain("CNI-X"));
        assert_eq!(nat.jumps_to("CNI-X").count(), 1);
        assert_eq!(nat.rules_in("CNI-X").next().unwrap().target(), Some("MASQUERADE"));
        assert!(nat.contains(&Rule::new("CNI-X", ["-j", "MASQUERADE"])));
        assert_eq!(SavedTable::parse("", "nat").unwrap(), SavedTable::default());
        assert!(SavedTable::parse("*nat\n-Z bogus\nCOMMIT\n", "nat").is_err());
    }

    #[test]
    fn renders_a_batch() {
        let mut batch = Batch::new("nat");
        assert!(batch.is_empty());
        batch.declare_chain("CNI-X");
        batch.append(&Rule::new("CNI-X", ["-m", "comment", "--comment", "a b", "-j", "MASQUERADE"]));
        batch.insert(&Rule::new("POSTROUTING", ["-j", "CNI-X"]), 1);
        batch.delete(&Rule::new("POSTROUTING", ["-s", "10.0.0.2/24", "-j", "CNI-X"]));
        batch.flush_chain("CNI-Y");
        batch.delete_chain("CNI-Y");
        assert_eq!(
            batch.render(),
            "*nat\n:CNI-X - [0:0]\n-A CNI-X -m comment --comment \"a b\" -j MASQUERADE\n-I POSTROUTING 1 -j CNI-X\n\
             -D POSTROUTING -s 10.0.0.2/24 -j CNI-X\n-F CNI-Y\n-X CNI-Y\nCOMMIT\n"
        );
    }

    #[test]
    fn rule_text_that_would_change_meaning_is_refused() {
        // An argument with a line break would become a second command: rendered as NUL, refused.
        let mut batch = Batch::new("nat");
        batch.append(&Rule::new("CNI-X", ["-d", "10.0.0.1\n-A PREROUTING -p tcp --dport 22 -j DNAT", "-j", "ACCEPT"]));
        let text = batch.render();
        assert_eq!(text.lines().count(), 3, "one command stays one line: {text:?}");
        let e = check_text("iptables-restore", &text, Some(MAX_RESTORE_LINE)).unwrap_err();
        assert!(e.to_string().contains("control character"), "{e}");
        for arg in ["a\0b", "a\rb", "a\u{85}b"] {
            let mut batch = Batch::new("nat");
            batch.append(&Rule::new("CNI-X", ["-d", arg]));
            assert!(check_text("iptables-restore", &batch.render(), Some(MAX_RESTORE_LINE)).is_err(), "{arg:?}");
        }
        // iptables-restore reads 10239 bytes a line: one byte more and the tail is a new command.
        let mut batch = Batch::new("nat");
        batch.append(&Rule::new("CNI-X", ["-m", "comment", "--comment", &"x".repeat(MAX_RESTORE_LINE)]));
        let e = check_text("iptables-restore", &batch.render(), Some(MAX_RESTORE_LINE)).unwrap_err();
        assert!(e.to_string().contains("10238 bytes"), "{e}");
        assert!(check_text("nft", &batch.render(), None).is_ok(), "nft reads lines of any length");
        let mut ok = Batch::new("nat");
        ok.append(&Rule::new("CNI-X", ["-m", "comment", "--comment", "a\tb \"c\"", "-j", "ACCEPT"]));
        assert!(check_text("iptables-restore", &ok.render(), Some(MAX_RESTORE_LINE)).is_ok());
        let mut script = crate::firewall::tools::nft::Script::new();
        script.add_rule("ip", "t", "c", "ip daddr 10.0.0.1\0 accept");
        assert!(check_text("nft", &script.render(), None).is_err());
    }
}
