#!/usr/bin/env python3
"""How close to direct QPS can *any* TCP relay get on this host?

The proxy's benchmark target (issue 5: point-select QPS through the
read-only port >= 0.95 of direct) is missed by phxsqlproxy and by HAProxy
alike (docs/benchmarks.md). This script measures the bound for a relay
that does no user-space work at all per query: after the MariaDB greeting,
both sockets go into an eBPF sockmap (BPF_MAP_TYPE_SOCKHASH with an
SK_SKB verdict program that redirects each received skb to the other
socket's egress), so bytes move inside the kernel, with no wake-up of the
relay process, no read and no write. What is left is what any relay must
pay: one more TCP connection, i.e. each message crosses the loopback TCP
stack twice instead of once.

One throw-away mariadbd (temp datadir, free port), sysbench
oltp_point_select; alternately: direct, through the kernel relay, and
through HAProxy in TCP mode (if installed); prints a table.

Needs root (bpf(2)), a kernel with CONFIG_BPF_STREAM_PARSER / sockmap (5.13+
for the SK_SKB verdict attach type), mariadb-server, sysbench.

    python3 scripts/bench-relay-bound.py [--time 15] [--rounds 2] [--threads 16]

A measuring tool, not a relay to deploy: the kernel does not apply
backpressure to a sockmap redirect (a slow client reading a large result
makes the kernel queue all of it: 600 MB seen queued while the MariaDB
query had already finished), which is one reason phxsqlproxy does not
relay this way.
"""

import argparse
import ctypes
import os
import platform
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

# --- bpf(2), by hand: constants from <linux/bpf.h> --------------------------
SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
BPF_MAP_CREATE, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM = 0, 2, 3
BPF_PROG_LOAD, BPF_PROG_ATTACH = 5, 8
BPF_MAP_TYPE_SOCKHASH = 18
BPF_PROG_TYPE_SK_SKB = 14
BPF_SK_SKB_VERDICT = 38
BPF_FUNC_SK_REDIRECT_HASH = 72
# struct __sk_buff offsets
SKB_REMOTE_IP4, SKB_LOCAL_IP4, SKB_REMOTE_PORT, SKB_LOCAL_PORT = 92, 96, 132, 136

libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 144)
    r = libc.syscall(SYS_BPF, cmd, buf, 144)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"bpf({cmd}): {os.strerror(e)}")
    return r


def insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


class KernelRelay:
    """SOCKHASH keyed by a socket's own 4-tuple, holding its peer socket.

    The verdict program builds the key of the socket the skb arrived on
    (remote ip, local ip, remote port, local port, as __sk_buff gives them)
    and redirects to whatever socket is stored under it. A missing key
    returns SK_PASS (the data stays on its own socket, for user space)
    rather than dropping it.
    """

    def __init__(self):
        self.map_fd = bpf(BPF_MAP_CREATE, struct.pack("<IIIII", BPF_MAP_TYPE_SOCKHASH, 16, 4, 65536, 0))
        prog = b"".join([
            insn(0xBF, 6, 1),                                   # r6 = ctx
            insn(0x61, 2, 6, SKB_REMOTE_IP4), insn(0x63, 10, 2, -16),
            insn(0x61, 2, 6, SKB_LOCAL_IP4), insn(0x63, 10, 2, -12),
            insn(0x61, 2, 6, SKB_REMOTE_PORT), insn(0x63, 10, 2, -8),
            insn(0x61, 2, 6, SKB_LOCAL_PORT), insn(0x63, 10, 2, -4),
            insn(0xBF, 1, 6),                                   # r1 = ctx
            insn(0x18, 2, 1, 0, self.map_fd), insn(0),          # r2 = map
            insn(0xBF, 3, 10), insn(0x07, 3, 0, 0, -16),        # r3 = &key
            insn(0xB7, 4, 0, 0, 0),                             # r4 = 0: egress
            insn(0x85, 0, 0, 0, BPF_FUNC_SK_REDIRECT_HASH),
            insn(0x55, 0, 0, 1, 0),                             # SK_DROP (no key)?
            insn(0xB7, 0, 0, 0, 1),                             #   -> SK_PASS
            insn(0x95),
        ])
        self._keep = [ctypes.create_string_buffer(b"GPL"), ctypes.create_string_buffer(prog, len(prog)),
                      ctypes.create_string_buffer(65536)]
        lic, code, log = self._keep
        attr = struct.pack("<IIQQIIQI", BPF_PROG_TYPE_SK_SKB, len(prog) // 8, ctypes.addressof(code),
                           ctypes.addressof(lic), 1, 65536, ctypes.addressof(log), 0)
        attr = attr.ljust(68, b"\0") + struct.pack("<I", BPF_SK_SKB_VERDICT)
        try:
            self.prog_fd = bpf(BPF_PROG_LOAD, attr)
        except OSError as e:
            raise OSError(e.errno, f"{e}; verifier: {log.value.decode(errors='replace')}") from None
        bpf(BPF_PROG_ATTACH, struct.pack("<IIII", self.map_fd, self.prog_fd, BPF_SK_SKB_VERDICT, 0))
        self.userspace_bytes = 0

    @staticmethod
    def key(s):
        lip, lport = s.getsockname()[:2]
        rip, rport = s.getpeername()[:2]
        # remote_port: network order in the upper 16 bits; local_port: host order.
        return (socket.inet_aton(rip) + socket.inet_aton(lip) + b"\0\0" + struct.pack(">H", rport)
                + struct.pack("<I", lport))

    def _elem(self, cmd, key, fd=None):
        kb = ctypes.create_string_buffer(key, 16)
        vb = ctypes.create_string_buffer(struct.pack("<I", fd or 0), 4)
        bpf(cmd, struct.pack("<IIQQQ", self.map_fd, 0, ctypes.addressof(kb),
                             ctypes.addressof(vb) if fd is not None else 0, 0))

    def serve(self, client, backend_addr):
        server = socket.create_connection(backend_addr)
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # MySQL: the server speaks first and then waits; the client waits for
        # the greeting. Splice both while neither has anything in flight,
        # then hand the greeting over.
        head = recv_exact(server, 4)
        greeting = head + recv_exact(server, int.from_bytes(head[:3], "little"))
        kc, ks = self.key(client), self.key(server)
        self._elem(BPF_MAP_UPDATE_ELEM, kc, server.fileno())
        self._elem(BPF_MAP_UPDATE_ELEM, ks, client.fileno())
        client.sendall(greeting)
        # Wait for either side's FIN only (EPOLLRDHUP, not EPOLLIN: data
        # arrivals must not wake this thread).
        peer = {client.fileno(): server, server.fileno(): client}
        sock = {client.fileno(): client, server.fileno(): server}
        ep = select.epoll()
        for fd in peer:
            ep.register(fd, select.EPOLLRDHUP)
        open_fds = set(peer)
        client.setblocking(False)
        server.setblocking(False)
        while open_fds:
            for fd, _ in ep.poll():
                if fd not in open_fds:
                    continue
                try:
                    data = sock[fd].recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:  # only if a key was missing (never, normally)
                    self.userspace_bytes += len(data)
                    peer[fd].setblocking(True)
                    peer[fd].sendall(data)
                    peer[fd].setblocking(False)
                    continue
                open_fds.discard(fd)
                ep.unregister(fd)
                try:
                    peer[fd].shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        for k in (kc, ks):
            try:
                self._elem(BPF_MAP_DELETE_ELEM, k)
            except OSError:
                pass
        client.close()
        server.close()


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("backend closed during the greeting")
        buf += chunk
    return buf


def run_relay(listen_port, backend_port):
    relay = KernelRelay()
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", listen_port))
    ls.listen(1024)
    print("ready", flush=True)

    def report(*_):
        print(f"user-space bytes relayed: {relay.userspace_bytes}", flush=True)
    signal.signal(signal.SIGUSR1, report)
    while True:
        c, _ = ls.accept()
        threading.Thread(target=relay.serve, args=(c, ("127.0.0.1", backend_port)), daemon=True).start()


# --- the benchmark --------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not start listening on :{port}")


def sysbench(port, args, cmd):
    out = subprocess.run(
        ["sysbench", "oltp_point_select", "--db-driver=mysql", "--mysql-host=127.0.0.1",
         f"--mysql-port={port}", "--mysql-user=bench", "--mysql-password=bench", "--mysql-db=sbtest",
         "--tables=4", "--table-size=10000", f"--threads={args.threads}", f"--time={args.time}",
         "--percentile=95", cmd],
        capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"sysbench {cmd} on :{port} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time", type=int, default=15, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--relay", nargs=2, type=int, metavar=("LISTEN", "BACKEND"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.relay:
        return run_relay(*args.relay)
    if SYS_BPF is None:
        sys.exit(f"bpf(2) syscall number unknown for {platform.machine()} (x86_64 and aarch64 only)")
    for tool in ("mariadbd", "mariadb-install-db", "sysbench"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} is missing: apt-get install -y mariadb-server sysbench")

    tmp = tempfile.mkdtemp(prefix="relay-bound-")
    procs = []
    try:
        data, sock = os.path.join(tmp, "data"), os.path.join(tmp, "mysqld.sock")
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
                        "--auth-root-authentication-method=normal"], check=True, capture_output=True)
        db_port = free_port()
        procs.append(subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={data}", "--user=root", f"--port={db_port}",
             "--bind-address=127.0.0.1", f"--socket={sock}", "--max-connections=1000",
             "--skip-name-resolve", f"--log-error={tmp}/mariadbd.err"]))
        wait_port(db_port, "mariadbd")
        subprocess.run(["mariadb", f"--socket={sock}", "-uroot", "-e",
                        "CREATE DATABASE sbtest; CREATE USER bench@'%' IDENTIFIED BY 'bench';"
                        "GRANT ALL ON *.* TO bench@'%';"], check=True)
        sysbench(db_port, args, "prepare")

        paths = [("direct to MariaDB", db_port)]
        relay_port = free_port()
        relay = subprocess.Popen([sys.executable, __file__, "--relay", str(relay_port), str(db_port)],
                                 stdout=subprocess.PIPE, text=True)
        procs.append(relay)
        if relay.stdout.readline().strip() != "ready":
            sys.exit("the kernel relay did not start (root? a kernel with sockmap?)")
        paths.append(("kernel relay (eBPF sockmap, no user-space work per query)", relay_port))
        if shutil.which("haproxy"):
            hport = free_port()
            cfg = os.path.join(tmp, "haproxy.cfg")
            with open(cfg, "w") as f:
                f.write(f"global\n    maxconn 2000\ndefaults\n    mode tcp\n    timeout connect 5s\n"
                        f"    timeout client 1h\n    timeout server 1h\nlisten ro\n"
                        f"    bind 127.0.0.1:{hport}\n    server db 127.0.0.1:{db_port}\n")
            procs.append(subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            wait_port(hport, "haproxy")
            paths.append(("HAProxy, tcp mode (user-space relay)", hport))

        qps = {name: [] for name, _ in paths}
        for r in range(1, args.rounds + 1):
            for name, port in paths:
                out = sysbench(port, args, "run")
                m = re.search(r"queries:\s+\d+\s+\(([\d.]+) per sec", out)
                p95 = re.search(r"95th percentile:\s+([\d.]+)", out)
                qps[name].append(float(m.group(1)))
                print(f"round {r} {name}: {float(m.group(1)):.0f} QPS, p95 {p95.group(1)} ms", flush=True)
        relay.send_signal(signal.SIGUSR1)
        print(relay.stdout.readline().strip())
        direct = sum(qps[paths[0][0]]) / args.rounds
        print(f"\nsysbench oltp_point_select, {args.threads} threads, {args.rounds} x {args.time} s per path, "
              f"{os.cpu_count()} CPUs\n")
        print("| path | QPS | / direct |\n|---|---:|---:|")
        for name, _ in paths:
            mean = sum(qps[name]) / args.rounds
            print(f"| {name} | {mean:.0f} | {mean / direct:.2f} |")
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
