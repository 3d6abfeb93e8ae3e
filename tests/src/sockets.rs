//! Counting a process's TCP connections to a port, from `/proc` (Linux):
//! the socket inodes among `/proc/<pid>/fd` matched against the remote
//! addresses in `/proc/net/tcp` and `/proc/net/tcp6`.

use std::collections::HashSet;

/// TCP sockets the process `pid` holds whose remote port is `port`, in any
/// state but `LISTEN` (connecting and closing ones count: they hold a slot
/// of the peer's per-client limit too).
pub fn connections_to(pid: u32, port: u16) -> usize {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
                .filter_map(|target| {
                    let target = target.to_string_lossy().into_owned();
                    let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
                    Some(inode.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter(|line| remote_port(line) == Some(port))
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    // State 0A is LISTEN; field 9 is the inode.
                    (fields.get(3) != Some(&"0A"))
                        .then(|| fields.get(9).map(|i| (*i).to_owned()))?
                })
                .collect::<Vec<_>>()
        })
        .filter(|inode| inodes.contains(inode))
        .count()
}

/// The remote port of one `/proc/net/tcp` line (`rem_address` is `HEX:PORT`).
fn remote_port(line: &str) -> Option<u16> {
    let remote = line.split_whitespace().nth(2)?;
    u16::from_str_radix(remote.rsplit(':').next()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_this_process_connections_to_a_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        let pid = std::process::id();
        assert_eq!(connections_to(pid, port), 0);
        let _a =
            std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{e}"));
        let _b =
            std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(connections_to(pid, port), 2);
    }
}
