//! The `nft` tool: scripts built line by line and run as one transaction (`nft -f -`), and
//! `nft -j list` output parsed into rules with their handles (the only way to delete one rule).
//! Used where nft text is the interface: user `conditionsV4`/`conditionsV6` of portmap, bridge's
//! `macspoofchk`, and deletion by handle of iptables-nft rules.

use super::{check_text, push_line, run};
use crate::firewall::error::FirewallError;
use crate::firewall::names::cut_at_char_boundary;
use serde_json::Value;

/// Longest comment the kernel stores (`NFTNL_UDATA_COMMENT_MAXLEN`); knftables truncates to it too.
pub const COMMENT_MAX_LEN: usize = 128;

/// Checks that `name` can be written bare in an nft script (nft 1.0.6 does not accept quoted chain
/// names): a letter, `_` or `.` first, then letters, digits, `/`, `-`, `_`, `.`.
pub fn identifier<'a>(what: &'static str, name: &'a str) -> Result<&'a str, FirewallError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '.');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'));
    if first_ok && rest_ok && name.len() < 256 {
        Ok(name)
    } else {
        Err(FirewallError::Invalid {
            what,
            value: name.to_string(),
            reason: "not expressible as an nft identifier ([A-Za-z_.][A-Za-z0-9/_.-]*, under 256 bytes)",
        })
    }
}

/// A double-quoted nft string; nft has no escape for `"` or line breaks, so those are rejected.
pub fn quote(what: &'static str, s: &str) -> Result<String, FirewallError> {
    if s.contains(['"', '\n', '\r']) {
        return Err(FirewallError::Invalid {
            what,
            value: s.to_string(),
            reason: "nft strings cannot contain quotes or line breaks",
        });
    }
    Ok(format!("\"{s}\""))
}

/// Cuts a comment to [`COMMENT_MAX_LEN`] bytes at a character boundary.
pub fn truncate_comment(mut comment: String) -> String {
    comment.truncate(cut_at_char_boundary(&comment, COMMENT_MAX_LEN).len());
    comment
}

/// An `nft -f` script; the kernel applies it as one transaction, so it either all happens or none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Script {
    lines: Vec<String>,
}

impl Script {
    /// An empty script.
    pub fn new() -> Script {
        Script::default()
    }

    /// `add table <family> <table> [{ comment "…" ; }]` (a no-op for an existing table).
    pub fn add_table(&mut self, family: &str, table: &str, comment: Option<&str>) {
        match comment {
            Some(c) => self.lines.push(format!("add table {family} {table} {{ comment \"{c}\" ; }}")),
            None => self.lines.push(format!("add table {family} {table}")),
        }
    }

    /// `add chain <family> <table> <chain> [{ <spec> }]`, e.g. spec `type nat hook postrouting priority srcnat ;`.
    pub fn add_chain(&mut self, family: &str, table: &str, chain: &str, spec: Option<&str>) {
        match spec {
            Some(s) => self.lines.push(format!("add chain {family} {table} {chain} {{ {s} }}")),
            None => self.lines.push(format!("add chain {family} {table} {chain}")),
        }
    }

    /// `flush chain …` (the chain must exist, or have been added earlier in the script).
    pub fn flush_chain(&mut self, family: &str, table: &str, chain: &str) {
        self.lines.push(format!("flush chain {family} {table} {chain}"));
    }

    /// `delete chain …` (the chain must exist and nothing may jump to it).
    pub fn delete_chain(&mut self, family: &str, table: &str, chain: &str) {
        self.lines.push(format!("delete chain {family} {table} {chain}"));
    }

    /// `add rule <family> <table> <chain> <rule>`: appends a rule.
    pub fn add_rule(&mut self, family: &str, table: &str, chain: &str, rule: &str) {
        self.lines.push(format!("add rule {family} {table} {chain} {rule}"));
    }

    /// `delete rule … handle <n>`: deletes one listed rule.
    pub fn delete_rule(&mut self, rule: &ListedRule) {
        self.lines.push(format!("delete rule {} {} {} handle {}", rule.family, rule.table, rule.chain, rule.handle));
    }

    /// `delete rule <family> <table> <chain> handle <handle>`.
    pub fn delete_rule_handle(&mut self, family: &str, table: &str, chain: &str, handle: u64) {
        self.lines.push(format!("delete rule {family} {table} {chain} handle {handle}"));
    }

    /// Whether the script would change nothing.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The script text, one command per line; a control character inside a command is written as
    /// NUL, which [`nft_apply`] refuses to run.
    pub fn render(&self) -> String {
        let mut text = String::new();
        for line in &self.lines {
            push_line(&mut text, line);
        }
        text
    }
}

/// One rule from `nft -j list`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedRule {
    /// Address family (`inet`, `bridge`, …).
    pub family: String,
    /// Table name.
    pub table: String,
    /// Chain name.
    pub chain: String,
    /// Kernel handle, used to delete it.
    pub handle: u64,
    /// Its comment, if any.
    pub comment: Option<String>,
    /// Its statements, in nft's JSON form.
    pub expr: Vec<Value>,
}

impl ListedRule {
    /// Whether the rule contains the statement `{"<verdict>": {"target": "<chain>"}}` (jump or goto).
    pub fn has_verdict_to(&self, verdict: &str, chain: &str) -> bool {
        self.expr.iter().any(|e| e.get(verdict).and_then(|v| v.get("target")).and_then(Value::as_str) == Some(chain))
    }

    /// The right-hand side of the match `payload <protocol> <field> <op> …` (e.g. `ip saddr ==`).
    pub fn payload_match(&self, protocol: &str, field: &str, op: &str) -> Option<&Value> {
        self.expr.iter().filter_map(|e| e.get("match")).find_map(|m| {
            let payload = m.get("left")?.get("payload")?;
            let hit = payload.get("protocol")?.as_str() == Some(protocol)
                && payload.get("field")?.as_str() == Some(field)
                && m.get("op")?.as_str() == Some(op);
            hit.then(|| m.get("right")).flatten()
        })
    }
}

/// The chains and rules of an `nft -j list table|chain …` answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    /// Chain names, in listing order.
    pub chains: Vec<String>,
    /// Rules, in listing order (rules of one chain keep their evaluation order).
    pub rules: Vec<ListedRule>,
}

impl Listing {
    /// Reads the `{"nftables": [...]}` document nft prints.
    pub fn parse(doc: &Value) -> Result<Listing, String> {
        let items = doc.get("nftables").and_then(Value::as_array).ok_or("no \"nftables\" array")?;
        let mut listing = Listing::default();
        for item in items {
            if let Some(chain) = item.get("chain") {
                let name = chain.get("name").and_then(Value::as_str).ok_or("chain without name")?;
                listing.chains.push(name.to_string());
            } else if let Some(rule) = item.get("rule") {
                let text = |key: &str| -> Result<String, String> {
                    rule.get(key).and_then(Value::as_str).map(str::to_string).ok_or(format!("rule without {key}"))
                };
                listing.rules.push(ListedRule {
                    family: text("family")?,
                    table: text("table")?,
                    chain: text("chain")?,
                    handle: rule.get("handle").and_then(Value::as_u64).ok_or("rule without handle")?,
                    comment: rule.get("comment").and_then(Value::as_str).map(str::to_string),
                    expr: rule.get("expr").and_then(Value::as_array).cloned().unwrap_or_default(),
                });
            }
        }
        Ok(listing)
    }

    /// Lists `what` (e.g. `["table", "bridge", "nat"]`); an absent table or chain is an empty listing.
    pub fn fetch(what: &[&str]) -> Result<Listing, FirewallError> {
        match nft_list(what)? {
            None => Ok(Listing::default()),
            Some(doc) => Listing::parse(&doc)
                .map_err(|reason| FirewallError::Parse { command: format!("nft -j list {}", what.join(" ")), reason }),
        }
    }

    /// Whether the chain exists.
    pub fn has_chain(&self, name: &str) -> bool {
        self.chains.iter().any(|c| c == name)
    }

    /// The rules of one chain, in order.
    pub fn rules_in<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a ListedRule> + 'a {
        self.rules.iter().filter(move |r| r.chain == chain)
    }
}

/// Applies an nft script as one transaction: `nft -f -`.
pub fn nft_apply(script: &str) -> Result<(), FirewallError> {
    check_text("nft", script, None)?;
    run("nft", &["-f", "-"], Some(script)).map(drop)
}

/// Lists an nft object as JSON (`nft -j list <what…>`); `None` when the table or chain does not exist.
pub fn nft_list(what: &[&str]) -> Result<Option<serde_json::Value>, FirewallError> {
    let mut args = vec!["-j", "list"];
    args.extend_from_slice(what);
    match run("nft", &args, None) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| FirewallError::Parse { command: format!("nft {}", args.join(" ")), reason: e.to_string() }),
        Err(FirewallError::Command { stderr, .. }) if stderr.contains("No such file or directory") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Lists `what`, plans a script from the listing and applies it, re-planning once after a failure as
/// the iptables backend's `apply` does. `tolerate_unsupported` makes a kernel without nf_tables "nothing to do".
pub fn apply_nft(
    what: &[&str],
    tolerate_unsupported: bool,
    plan: impl Fn(&Listing) -> Result<Option<Script>, FirewallError>,
) -> Result<(), FirewallError> {
    for attempt in 0..2 {
        let listing = match Listing::fetch(what) {
            Ok(listing) => listing,
            Err(FirewallError::Command { ref stderr, .. })
                if tolerate_unsupported && stderr.contains("not supported") =>
            {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let Some(script) = plan(&listing)?.filter(|s| !s.is_empty()) else { return Ok(()) };
        match nft_apply(&script.render()) {
            Ok(()) => return Ok(()),
            Err(e) if attempt == 0 => log::debug!("re-planning after a failed transaction: {e}"),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_names_and_strings() {
        assert!(identifier("chain", "cni-br-iface-ctr1-eth0.100").is_ok());
        assert!(identifier("chain", "0abc").is_err());
        assert!(identifier("chain", "a b").is_err());
        assert_eq!(quote("ifname", "veth1").unwrap(), "\"veth1\"");
        assert!(quote("ifname", "a\"b").is_err());
        assert_eq!(truncate_comment("é".repeat(70)).len(), 128);
        assert_eq!(truncate_comment(format!("a{}", "é".repeat(70))).len(), 127);
    }

    #[test]
    fn renders_a_script() {
        let mut s = Script::new();
        assert!(s.is_empty());
        s.add_table("inet", "t", Some("c"));
        s.add_chain("inet", "t", "p", Some("type nat hook postrouting priority srcnat ;"));
        s.flush_chain("inet", "t", "p");
        s.add_rule("inet", "t", "p", "goto q");
        let listed = ListedRule {
            family: "inet".into(),
            table: "t".into(),
            chain: "q".into(),
            handle: 7,
            comment: None,
            expr: vec![],
        };
        s.delete_rule(&listed);
        s.delete_chain("inet", "t", "q");
        assert_eq!(
            s.render(),
            "add table inet t { comment \"c\" ; }\nadd chain inet t p { type nat hook postrouting priority srcnat ; }\n\
             flush chain inet t p\nadd rule inet t p goto q\ndelete rule inet t q handle 7\ndelete chain inet t q\n"
        );
    }

    #[test]
    fn parses_a_listing() {
        // Trimmed from `nft -j list table bridge nat` after the reference bridge's macspoofchk setup.
        let doc: Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"table": {"family": "bridge", "name": "nat", "handle": 1}},
            {"chain": {"family": "bridge", "table": "nat", "name": "PREROUTING", "handle": 1, "type": "filter",
              "hook": "prerouting", "prio": -300, "policy": "accept"}},
            {"chain": {"family": "bridge", "table": "nat", "name": "cni-br-iface-ctr1-eth0", "handle": 2}},
            {"rule": {"family": "bridge", "table": "nat", "chain": "PREROUTING", "handle": 4,
              "comment": "macspoofchk-ctr1-eth0", "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "veth5a54b7d2"}},
                {"jump": {"target": "cni-br-iface-ctr1-eth0"}}]}},
            {"rule": {"family": "inet", "table": "m", "chain": "masq_checks", "handle": 6, "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "10.1.0.5"}},
                {"masquerade": null}]}}]}"#,
        )
        .unwrap();
        let listing = Listing::parse(&doc).unwrap();
        assert_eq!(listing.chains, ["PREROUTING", "cni-br-iface-ctr1-eth0"]);
        assert!(listing.has_chain("PREROUTING"));
        let jump = listing.rules_in("PREROUTING").next().unwrap();
        assert_eq!(jump.handle, 4);
        assert_eq!(jump.comment.as_deref(), Some("macspoofchk-ctr1-eth0"));
        assert!(jump.has_verdict_to("jump", "cni-br-iface-ctr1-eth0"));
        assert!(!jump.has_verdict_to("goto", "cni-br-iface-ctr1-eth0"));
        let masq = listing.rules_in("masq_checks").next().unwrap();
        assert_eq!(masq.payload_match("ip", "saddr", "=="), Some(&Value::from("10.1.0.5")));
        assert_eq!(masq.payload_match("ip", "daddr", "!="), None);
        assert!(Listing::parse(&serde_json::json!({})).is_err());
    }
}
