"""The chat scenario through the generated Python binding, against a real
mesh-server on a free port.

Run by scripts/test.sh after bindings/mesh-ffi/generate.sh:

    PYTHONPATH=bindings/mesh-ffi/generated/python \
      MESH_SERVER_BIN=target/debug/mesh-server \
      python3 -m unittest discover -s bindings/mesh-ffi/tests -v
"""

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import threading
import unittest
import uuid

import mesh_ffi as mesh

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
SERVER_BIN = os.environ.get("MESH_SERVER_BIN") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "debug", "mesh-server"
)
TIMEOUT = 10


class Server:
    """`mesh-server --listen 127.0.0.1:0 --data <tmp>`, up once it logs its address."""

    def __init__(self):
        self.data = tempfile.mkdtemp(prefix="mesh-py-")
        self.proc = subprocess.Popen(
            [SERVER_BIN, "--listen", "127.0.0.1:0", "--data", self.data],
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


class ChatTest(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    async def connect(self, username):
        api = mesh.MeshApi(self.server.url)
        auth = await api.register(username, PASSWORD, None)
        listener = Listener(asyncio.get_running_loop())
        client = await mesh.connect(self.server.url, auth.token, "python", listener)
        self.addAsyncCleanup(client.shutdown)
        return auth, client, listener

    async def test_two_users_chat_through_the_listener_and_page_history(self):
        alice_auth, alice, alice_events = await self.connect(name())
        bob_auth, bob, bob_events = await self.connect(name())
        self.assertEqual(alice.me().username, alice_auth.user.username)

        room = await alice.create_room("general", "chat", False)
        members = await bob.join_room(room.id)
        self.assertEqual(
            sorted(m.user.username for m in members),
            sorted([alice_auth.user.username, bob_auth.user.username]),
        )

        sent = await alice.send_message(room.id, "hello bob")
        self.assertEqual(sent.seq, 1)
        got = await bob_events.wait_for(
            lambda e: e.message if e.is_message() else None
        )
        self.assertEqual((got.content, got.seq), ("hello bob", 1))
        self.assertEqual(got.sender.username, alice_auth.user.username)

        bob.set_typing(room.id, True)
        typing = await alice_events.wait_for(lambda e: e if e.is_typing() else None)
        self.assertEqual((typing.user_id, typing.typing), (bob_auth.user.id, True))

        await bob.set_presence("away", "lunch")
        presence = await alice_events.wait_for(
            lambda e: e if e.is_presence() and e.user_id == bob_auth.user.id else None
        )
        self.assertEqual((presence.status, presence.status_message), ("away", "lunch"))

        for i in range(2, 8):
            await bob.send_message(room.id, f"message {i}")
        newest = await alice.history(room.id, None, None, 3)
        self.assertEqual([m.seq for m in newest.messages], [5, 6, 7])
        self.assertTrue(newest.has_more)
        older = await alice.history(room.id, 5, None, 10)
        self.assertEqual([m.seq for m in older.messages], [1, 2, 3, 4])
        self.assertFalse(older.has_more)
        self.assertEqual(older.messages[0].content, "hello bob")
        newer = await alice.history(room.id, None, 5, 10)
        self.assertEqual([m.seq for m in newer.messages], [6, 7])

        rooms = await bob.rooms()
        self.assertIn(room.id, [r.id for r in rooms])

    async def test_p2p_sessions_are_granted_and_closed(self):
        _, alice, alice_events = await self.connect(name())
        _, bob, bob_events = await self.connect(name())
        room = await alice.create_room("files", None, False)
        await bob.join_room(room.id)
        grant = await alice.request_p2p_session(room.id, bob.peer_id(), "file")
        self.assertEqual(
            (grant.kind, grant.initiator_peer_id, grant.target_peer_id),
            ("file", alice.peer_id(), bob.peer_id()),
        )
        self.assertEqual(len(grant.session_token.split(".")), 3)
        heard = await bob_events.wait_for(
            lambda e: e.session if e.is_p2p_session_created() else None
        )
        self.assertEqual(heard.session_id, grant.session_id)
        alice.close_p2p_session(grant.session_id)
        closed = await bob_events.wait_for(
            lambda e: e.session_id if e.is_p2p_session_closed() else None
        )
        self.assertEqual(closed, grant.session_id)
        with self.assertRaises(mesh.MeshError.Client) as caught:
            await alice.request_p2p_session(room.id, bob.peer_id(), "teleport")
        self.assertEqual(caught.exception.code, "invalid_argument")

    async def test_wrong_password_is_unauthorized(self):
        username = name()
        api = mesh.MeshApi(self.server.url)
        await api.register(username, PASSWORD, None)
        with self.assertRaises(mesh.MeshError.Server) as caught:
            await api.login(username, "not the password")
        self.assertEqual(caught.exception.code, "unauthorized")
        auth = await api.login(username, PASSWORD)
        self.assertEqual(auth.user.username, username)

    async def test_a_bad_token_is_refused(self):
        listener = Listener(asyncio.get_running_loop())
        with self.assertRaises(mesh.MeshError.Server) as caught:
            await mesh.connect(self.server.url, "not-a-token", None, listener)
        self.assertEqual(caught.exception.code, "unauthorized")

    async def test_a_private_room_is_forbidden_to_outsiders(self):
        _, alice, _ = await self.connect(name())
        _, mallory, mallory_events = await self.connect(name())
        room = await alice.create_room("secret", None, True)
        with self.assertRaises(mesh.MeshError.Server) as caught:
            await mallory.send_message(room.id, "let me in")
        self.assertEqual(caught.exception.code, "forbidden")
        failed = await mallory_events.wait_for(lambda e: e if e.is_send_failed() else None)
        self.assertEqual((failed.room_id, failed.code), (room.id, "forbidden"))
        with self.assertRaises(mesh.MeshError.Server) as caught:
            await mallory.history(room.id, None, None, None)
        self.assertIn(caught.exception.code, ("forbidden", "not_found"))

    async def test_bad_arguments_are_client_errors(self):
        _, alice, _ = await self.connect(name())
        with self.assertRaises(mesh.MeshError.Client) as caught:
            await alice.send_message("not-a-room", "hi")
        self.assertEqual(caught.exception.code, "invalid_argument")
        with self.assertRaises(mesh.MeshError.Client) as caught:
            await alice.set_presence("sleepy", None)
        self.assertEqual(caught.exception.code, "invalid_argument")

    async def test_close_ends_with_a_closed_event(self):
        _, alice, events = await self.connect(name())
        await alice.shutdown()
        closed = await events.wait_for(lambda e: e if e.is_closed() else None)
        self.assertIsNone(closed.error)


if __name__ == "__main__":
    unittest.main()
