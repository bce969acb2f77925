//! Network partitions between node addresses, made with iptables rules
//! that are always removed again, even after a run that was killed.

use std::net::Ipv4Addr;

/// The comment every partition rule carries; the process id follows it.
const RULE_TAG: &str = "lockstep-chaos-";

/// iptables rules between node addresses, tagged with this process's id
/// and always removed: on `heal`, and on drop (so also on a panic, and on
/// Ctrl-C or SIGTERM, where `lockstep chaos` drops the run). Only a
/// SIGKILL can leave rules behind; the next run removes those.
#[derive(Debug)]
pub struct Partitions {
    rules: Vec<Vec<String>>,
}

impl Partitions {
    pub fn new() -> Partitions {
        remove_orphaned_rules();
        Partitions { rules: Vec::new() }
    }

    /// Drops traffic both ways between `ip` and each of `others`.
    pub fn isolate(&mut self, ip: Ipv4Addr, others: &[Ipv4Addr]) {
        let pairs: Vec<(Ipv4Addr, Ipv4Addr)> = others
            .iter()
            .flat_map(|other| [(ip, *other), (*other, ip)])
            .collect();
        self.drop_pairs(&pairs);
    }

    /// Drops the packets `ip` sends to each of `others`; theirs still
    /// reach it.
    pub fn drop_from(&mut self, ip: Ipv4Addr, others: &[Ipv4Addr]) {
        let pairs: Vec<(Ipv4Addr, Ipv4Addr)> = others.iter().map(|other| (ip, *other)).collect();
        self.drop_pairs(&pairs);
    }

    fn drop_pairs(&mut self, pairs: &[(Ipv4Addr, Ipv4Addr)]) {
        {
            for &(src, dst) in pairs {
                let rule: Vec<String> = [
                    "INPUT",
                    "-s",
                    &src.to_string(),
                    "-d",
                    &dst.to_string(),
                    "-j",
                    "DROP",
                    "-m",
                    "comment",
                    "--comment",
                    &format!("{RULE_TAG}{}", std::process::id()),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                let added = std::process::Command::new("iptables")
                    .arg("-A")
                    .args(&rule)
                    .status()
                    .is_ok_and(|s| s.success());
                if added {
                    self.rules.push(rule);
                }
            }
        }
    }

    pub fn heal(&mut self) {
        for rule in self.rules.drain(..) {
            let _ = std::process::Command::new("iptables")
                .arg("-D")
                .args(&rule)
                .status();
        }
    }
}

/// Removes the rules of chaos runs whose process no longer exists (killed
/// with SIGKILL, so no drop ran). Rules of live runs, in tests running side
/// by side, stay.
fn remove_orphaned_rules() {
    let Ok(listed) = std::process::Command::new("iptables")
        .args(["-S", "INPUT"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let owner = words
            .iter()
            .find_map(|w| w.strip_prefix(RULE_TAG))
            .and_then(|pid| pid.parse::<u32>().ok());
        let orphaned =
            owner.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
        if orphaned && words.first() == Some(&"-A") {
            let _ = std::process::Command::new("iptables")
                .arg("-D")
                .args(&words[1..])
                .status();
        }
    }
}

impl Default for Partitions {
    fn default() -> Self {
        Partitions::new()
    }
}

impl Drop for Partitions {
    fn drop(&mut self) {
        self.heal();
    }
}
