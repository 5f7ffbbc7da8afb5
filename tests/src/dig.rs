//! `dig`'s output read back: the tests check DNS answers with a real client, never with
//! the server's own code.

#[derive(Debug, Default)]
pub struct Dig {
    pub status: String,
    pub flags: Vec<String>,
    /// The answer section's records: (name, ttl, type, data).
    pub answer: Vec<(String, String, String, String)>,
    /// The authority section's records, likewise.
    pub authority: Vec<(String, String, String, String)>,
    /// The OPT pseudo-section's EDNS line (`; EDNS: version: 0, flags:; udp: 1232`).
    pub edns: Option<String>,
    /// The whole output, for failure messages.
    pub text: String,
}

impl Dig {
    /// The answer section's A addresses, sorted.
    pub fn addresses(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .answer
            .iter()
            .filter(|r| r.2 == "A")
            .map(|r| r.3.clone())
            .collect();
        v.sort();
        v
    }

    pub fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }

    /// Whether the authority section holds an SOA (a negative answer's).
    pub fn soa_in_authority(&self) -> bool {
        self.authority.iter().any(|r| r.2 == "SOA")
    }
}

/// Reads `dig`'s full output (not `+short`).
pub fn parse_dig(text: &str) -> Dig {
    let mut d = Dig {
        text: text.to_string(),
        ..Dig::default()
    };
    let mut section = "";
    for line in text.lines() {
        if let Some(i) = line.find("status: ") {
            d.status = line[i + 8..]
                .split(',')
                .next()
                .unwrap_or_default()
                .to_string();
        }
        if let Some(rest) = line.strip_prefix(";; flags: ") {
            d.flags = rest
                .split(';')
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect();
        }
        if line.starts_with("; EDNS:") {
            d.edns = Some(line.to_string());
        }
        if line.starts_with(";; ") && line.ends_with("SECTION:") {
            section = if line.contains("ANSWER") {
                "answer"
            } else if line.contains("AUTHORITY") {
                "authority"
            } else {
                ""
            };
            continue;
        }
        if line.is_empty() {
            section = "";
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 5 && !line.starts_with(';') {
            let rec = (
                f[0].to_string(),
                f[1].to_string(),
                f[3].to_string(),
                f[4..].join(" "),
            );
            match section {
                "answer" => d.answer.push(rec),
                "authority" => d.authority.push(rec),
                _ => {}
            }
        }
    }
    d
}
