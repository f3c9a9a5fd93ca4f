"""What the binding tests share: a real mesh-server on a free port (plain
HTTP, or HTTPS with a test CA made here), and a listener that hands events
from the library's thread to asyncio."""

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import threading
import uuid

import mesh_ffi as mesh

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
SERVER_BIN = os.environ.get("MESH_SERVER_BIN") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "debug", "mesh-server"
)
TIMEOUT = 10


class TestCa:
    """A throwaway CA and a leaf it signed for 127.0.0.1 and localhost, made
    with the `openssl` command in a temporary folder (`cleanup()` removes it)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="mesh-py-ca-")
        self.ca_path = self._path("ca.pem")
        self.cert_path = self._path("cert.pem")
        self.key_path = self._path("key.pem")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        self._openssl("req", "-x509", *ec, "-keyout", self._path("ca-key.pem"),
                      "-out", self.ca_path, "-days", "1", "-subj", "/CN=mesh python test CA",
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        self._openssl("req", *ec, "-keyout", self.key_path, "-out", self._path("leaf.csr"),
                      "-subj", "/CN=localhost")
        with open(self._path("leaf.ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                    "basicConstraints=critical,CA:FALSE\n"
                    "extendedKeyUsage=serverAuth\n")
        self._openssl("x509", "-req", "-in", self._path("leaf.csr"), "-CA", self.ca_path,
                      "-CAkey", self._path("ca-key.pem"), "-CAcreateserial", "-days", "1",
                      "-extfile", self._path("leaf.ext"), "-out", self.cert_path)
        with open(self.ca_path) as f:
            self.ca_pem = f.read()

    def _path(self, name):
        return os.path.join(self.dir, name)

    @staticmethod
    def _openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    def server_flags(self):
        return ["--tls-cert", self.cert_path, "--tls-key", self.key_path]

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class Server:
    """`mesh-server --listen 127.0.0.1:0 --data <tmp>`, up once it logs its
    address; `url` has the scheme the server logs (`http` or `https`)."""

    def __init__(self, flags=()):
        self.data = tempfile.mkdtemp(prefix="mesh-py-")
        self.proc = subprocess.Popen(
            [SERVER_BIN, "--listen", "127.0.0.1:0", "--data", self.data, *flags],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log = []
        found = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r"listening on (\S+) \((https?)\)", line)
                if m and not found.is_set():
                    self.url = f"{m.group(2)}://{m.group(1)}"
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(30):
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.log))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.data, ignore_errors=True)


class Listener(mesh.MeshListener):
    """Hands events from the library's thread to the test's asyncio loop."""

    def __init__(self, loop):
        self.loop = loop
        self.queue = asyncio.Queue()

    def on_event(self, event):
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def wait_for(self, pick):
        """The first event for which `pick` returns something other than None."""

        async def scan():
            while True:
                found = pick(await self.queue.get())
                if found is not None:
                    return found

        return await asyncio.wait_for(scan(), TIMEOUT)


def name():
    return "u" + uuid.uuid4().hex[:10]


PASSWORD = "correct horse battery"
