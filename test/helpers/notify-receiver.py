"""A stand-in for systemd's notify socket (Node cannot open unix datagram sockets): binds
argv[1], prints every message received as one line (newlines inside shown as spaces), and
closes file descriptors passed with BARRIER=1 so that `systemd-notify` stops waiting."""
import array, os, socket, sys

s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("listening", flush=True)
while True:
    msg, anc, _flags, _addr = s.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
            for fd in fds:
                os.close(fd)
    print(msg.decode("utf-8", "replace").replace("\n", " ").strip(), flush=True)
