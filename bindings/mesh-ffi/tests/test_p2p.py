"""P2P transfers between two agents through the generated Python binding:
real QUIC on loopback, sessions granted by a real mesh-server, progress
reported through the listener; each report says the path it took (`via`):
`direct` on loopback, `relay` through the server's relay when the receiver
announces only an address nobody answers at (and a clear error instead with
`no_relay`). Desktop targets only (as the binding).

Run by scripts/test.sh with the other binding tests (see test_chat.py).
"""

import asyncio
import os
import tempfile
import unittest

import mesh_ffi as mesh

from support import PASSWORD, TIMEOUT, Listener, Server, name

MIB = 1024 * 1024

# A local port nothing reads (nothing leaves the machine). An agent that
# announces only it (given
# addresses replace the discovered ones, the server-reflexive one too) gets
# no answer to the sender's direct attempts: only the relay reaches it.
UNREACHABLE = "127.0.0.1:9"


class Transfers(mesh.TransferListener):
    """Collects progress; hands finished and failed transfers to asyncio."""

    def __init__(self, loop):
        self.loop = loop
        self.progress = []
        self.done = asyncio.Queue()

    def on_progress(self, progress):
        self.progress.append(progress)

    def on_received(self, report):
        self.loop.call_soon_threadsafe(self.done.put_nowait, ("received", report))

    def on_failed(self, session_id, error):
        self.loop.call_soon_threadsafe(self.done.put_nowait, ("failed", (session_id, error)))

    async def next_done(self):
        return await asyncio.wait_for(self.done.get(), TIMEOUT)


class P2pTest(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def tmpdir(self):
        d = tempfile.TemporaryDirectory(prefix="mesh-py-p2p-")
        self.addCleanup(d.cleanup)
        return d.name

    async def agent(self, receive_dir=None, announce=(), no_relay=False):
        api = mesh.MeshApi(self.server.url)
        auth = await api.register(name(), PASSWORD, None)
        loop = asyncio.get_running_loop()
        listener, transfers = Listener(loop), Transfers(loop)
        config = mesh.AgentConfig(
            identity_dir=os.path.join(self.tmpdir(), "identity"),
            receive_dir=receive_dir,
            overwrite=False,
            bind="127.0.0.1:0",
            announce=list(announce),
            device_name="python agent",
            no_relay=no_relay,
        )
        agent = await mesh.start_agent(self.server.url, auth.token, config, listener, transfers)
        self.addAsyncCleanup(agent.shutdown)
        return agent, listener, transfers

    async def shared_room(self, alice, bob):
        room = await alice.client().create_room("files", None, False)
        await bob.client().join_room(room.id)
        return room

    async def test_a_file_arrives_with_progress_on_both_sides(self):
        inbox = self.tmpdir()
        alice, _, alice_transfers = await self.agent()
        bob, _, bob_transfers = await self.agent(receive_dir=inbox)
        room = await self.shared_room(alice, bob)

        src = os.path.join(self.tmpdir(), "photos.bin")
        content = os.urandom(3 * MIB + 12345)
        with open(src, "wb") as f:
            f.write(content)

        sent = await alice.send_file(room.id, bob.peer_id(), src, alice_transfers)
        self.assertEqual((sent.kind, sent.size, sent.files), ("file", len(content), 1))
        self.assertEqual(sent.resumed_from, 0)
        self.assertEqual(sent.via, "direct")

        what, report = await bob_transfers.next_done()
        self.assertEqual(what, "received", report)
        self.assertEqual(report.via, "direct")
        self.assertEqual(report.session_id, sent.session_id)
        self.assertEqual(report.blake3, sent.blake3)
        self.assertEqual(os.path.dirname(report.path), os.path.realpath(inbox))
        with open(report.path, "rb") as f:
            self.assertEqual(f.read(), content)
        self.assertEqual(sorted(os.listdir(inbox)), ["photos.bin"])

        for side, transfers, direction in (
            ("sender", alice_transfers, "send"),
            ("receiver", bob_transfers, "receive"),
        ):
            progress = transfers.progress
            self.assertTrue(progress, f"{side}: no progress reported")
            self.assertEqual({p.direction for p in progress}, {direction})
            self.assertEqual({p.session_id for p in progress}, {sent.session_id})
            done = [p.done for p in progress]
            self.assertEqual(done, sorted(done), f"{side}: progress went backwards")
            self.assertEqual((progress[-1].done, progress[-1].total), (len(content),) * 2)

    async def test_a_folder_arrives_whole(self):
        inbox = self.tmpdir()
        alice, _, alice_transfers = await self.agent()
        bob, _, bob_transfers = await self.agent(receive_dir=inbox)
        room = await self.shared_room(alice, bob)

        src = os.path.join(self.tmpdir(), "album")
        os.makedirs(os.path.join(src, "2026", "june"))
        files = {"cover.txt": b"cover", os.path.join("2026", "june", "beach.bin"): os.urandom(MIB)}
        for rel, data in files.items():
            with open(os.path.join(src, rel), "wb") as f:
                f.write(data)

        sent = await alice.send_folder(room.id, bob.peer_id(), src, alice_transfers)
        self.assertEqual((sent.kind, sent.files, sent.via), ("folder", 2, "direct"))
        what, report = await bob_transfers.next_done()
        self.assertEqual(what, "received", report)
        self.assertEqual(report.via, "direct")
        self.assertEqual(report.path, os.path.join(os.path.realpath(inbox), "album"))
        for rel, data in files.items():
            with open(os.path.join(report.path, rel), "rb") as f:
                self.assertEqual(f.read(), data)

    async def test_the_relay_reaches_an_agent_no_direct_path_reaches(self):
        # Two senders to one receiver that announces only UNREACHABLE, at the
        # same time (the test waits for the slower one only): alice's session
        # goes through the server's relay; carol's, with no_relay, fails with
        # a clear error once the agent's connect timeout (10 s) is up.
        inbox = self.tmpdir()
        alice, _, alice_transfers = await self.agent()
        carol, _, carol_transfers = await self.agent(no_relay=True)
        bob, _, bob_transfers = await self.agent(receive_dir=inbox, announce=[UNREACHABLE])
        room = await self.shared_room(alice, bob)
        await carol.client().join_room(room.id)
        src = os.path.join(self.tmpdir(), "relayed.bin")
        content = os.urandom(256 * 1024 + 3)
        with open(src, "wb") as f:
            f.write(content)
        stuck = os.path.join(self.tmpdir(), "stuck.bin")
        with open(stuck, "wb") as f:
            f.write(b"never sent")

        async def relayed():
            sent = await alice.send_file(room.id, bob.peer_id(), src, alice_transfers)
            self.assertEqual((sent.via, sent.size), ("relay", len(content)))
            what, report = await bob_transfers.next_done()
            self.assertEqual(what, "received", report)
            self.assertEqual((report.via, report.session_id), ("relay", sent.session_id))
            self.assertEqual(report.blake3, sent.blake3)
            with open(report.path, "rb") as f:
                self.assertEqual(f.read(), content)

        async def without_relay():
            with self.assertRaises(mesh.MeshError.P2p) as caught:
                await asyncio.wait_for(
                    carol.send_file(room.id, bob.peer_id(), stuck, carol_transfers), 2 * TIMEOUT
                )
            self.assertIn(caught.exception.code, ("timeout", "unreachable"), caught.exception.reason)
            self.assertEqual(carol_transfers.progress, [])

        await asyncio.gather(relayed(), without_relay())
        self.assertEqual(os.listdir(inbox), ["relayed.bin"])

    async def test_an_existing_file_is_refused_and_left_alone(self):
        inbox = self.tmpdir()
        alice, _, alice_transfers = await self.agent()
        bob, _, bob_transfers = await self.agent(receive_dir=inbox)
        room = await self.shared_room(alice, bob)
        with open(os.path.join(inbox, "notes.txt"), "wb") as f:
            f.write(b"mine")
        src = os.path.join(self.tmpdir(), "notes.txt")
        with open(src, "wb") as f:
            f.write(b"theirs")

        with self.assertRaises(mesh.MeshError.P2p) as caught:
            await alice.send_file(room.id, bob.peer_id(), src, alice_transfers)
        self.assertEqual(caught.exception.code, "already_exists")
        what, (_, error) = await bob_transfers.next_done()
        self.assertEqual((what, error.code), ("failed", "already_exists"))
        with open(os.path.join(inbox, "notes.txt"), "rb") as f:
            self.assertEqual(f.read(), b"mine")

    async def test_an_agent_without_a_receive_folder_refuses_files(self):
        alice, _, alice_transfers = await self.agent()
        bob, _, _ = await self.agent(receive_dir=None)
        room = await self.shared_room(alice, bob)
        src = os.path.join(self.tmpdir(), "a.txt")
        with open(src, "wb") as f:
            f.write(b"hello")
        with self.assertRaises(mesh.MeshError.P2p) as caught:
            await alice.send_file(room.id, bob.peer_id(), src, alice_transfers)
        self.assertEqual(caught.exception.code, "kind_not_accepted")

    async def test_a_missing_file_is_a_clear_error(self):
        alice, _, alice_transfers = await self.agent()
        bob, _, _ = await self.agent(receive_dir=self.tmpdir())
        room = await self.shared_room(alice, bob)
        missing = os.path.join(self.tmpdir(), "nope.bin")
        with self.assertRaises(mesh.MeshError.P2p) as caught:
            await alice.send_file(room.id, bob.peer_id(), missing, alice_transfers)
        self.assertIn(caught.exception.code, ("io", "invalid_argument"))
        self.assertIn("nope.bin", caught.exception.reason)


if __name__ == "__main__":
    unittest.main()
