"""What the binding tests share: a real mesh-server on a free port, and a
listener that hands events from the library's thread to asyncio."""

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


class Server:
    """`mesh-server --listen 127.0.0.1:0 --data <tmp>`, up once it logs its address."""

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
                m = re.search(r"listening on (\S+)", line)
                if m and not found.is_set():
                    self.url = "http://" + m.group(1)
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
