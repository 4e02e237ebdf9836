"""The TCP sockets a process listens on, read from /proc (Linux): what a server really bound."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path


def listening_sockets(pids) -> list[tuple[str, int, int, str]]:
    """(address, port, pid, command) of every TCP socket in LISTEN state that one of `pids` holds
    (IPv4 and IPv6; an IPv4-mapped IPv6 address reads as its IPv4 form)."""
    owner = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    owner[target[8:-1]] = pid
        except OSError:
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            words = line.split()
            if words[3] != "0A" or words[9] not in owner:  # 0A: LISTEN
                continue
            hex_ip, hex_port = words[1].split(":")
            raw = bytes.fromhex(hex_ip)  # the kernel's words are host-order (little-endian) 32-bit ints
            ip = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
            ip = getattr(ip, "ipv4_mapped", None) or ip
            pid = owner[words[9]]
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            found.append((str(ip), int(hex_port, 16), pid, command))
    return found
