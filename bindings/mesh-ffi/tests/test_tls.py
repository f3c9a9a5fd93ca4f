"""The chat scenario once over HTTPS/WSS: mesh-server with --tls-cert and
--tls-key from a CA made by the test (openssl), the binding told to trust
only that CA through `ca_cert_pem` (and P2P agents through
`AgentConfig.ca_cert_pem`). Without it (the platform's roots), or
with another CA, every call fails with the code "tls".

Run by scripts/test.sh with the other binding tests (see test_chat.py).
"""

import asyncio
import os
import tempfile
import unittest

import mesh_ffi as mesh

from support import PASSWORD, Listener, Server, TestCa, name
from test_p2p import Transfers


class TlsChatTest(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls):
        cls.ca = TestCa()
        cls.other_ca = TestCa()
        try:
            cls.server = Server(cls.ca.server_flags())
        except BaseException:
            cls.ca.cleanup()
            cls.other_ca.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.ca.cleanup()
        cls.other_ca.cleanup()

    async def connect(self, username):
        url, ca = self.server.url, self.ca.ca_pem
        auth = await mesh.MeshApi(url, ca_cert_pem=ca).register(username, PASSWORD, None)
        listener = Listener(asyncio.get_running_loop())
        client = await mesh.connect(url, auth.token, "python-tls", listener, ca_cert_pem=ca)
        self.addAsyncCleanup(client.shutdown)
        return auth, client, listener

    async def test_two_users_chat_over_https_and_wss_with_the_test_ca(self):
        self.assertTrue(self.server.url.startswith("https://127.0.0.1:"), self.server.url)
        alice_auth, alice, _ = await self.connect(name())
        bob_auth, bob, bob_events = await self.connect(name())
        self.assertEqual(alice.me().username, alice_auth.user.username)

        room = await alice.create_room("tls", None, False)
        await bob.join_room(room.id)
        sent = await alice.send_message(room.id, "hello over tls")
        got = await bob_events.wait_for(lambda e: e.message if e.is_message() else None)
        self.assertEqual((got.content, got.seq), ("hello over tls", sent.seq))
        self.assertEqual(got.sender.username, alice_auth.user.username)
        page = await bob.history(room.id, None, None, 10)
        self.assertEqual([m.content for m in page.messages], ["hello over tls"])
        self.assertEqual(bob.me().username, bob_auth.user.username)

    async def test_without_the_test_ca_http_and_websocket_fail_with_code_tls(self):
        url = self.server.url
        with self.assertRaises(mesh.MeshError.Client) as caught:
            await mesh.MeshApi(url).register(name(), PASSWORD, None)
        self.assertEqual(caught.exception.code, "tls", caught.exception)

        auth = await mesh.MeshApi(url, ca_cert_pem=self.ca.ca_pem).register(name(), PASSWORD, None)
        listener = Listener(asyncio.get_running_loop())
        with self.assertRaises(mesh.MeshError.Client) as caught:
            await mesh.connect(url, auth.token, "python-tls", listener)
        self.assertEqual(caught.exception.code, "tls", caught.exception)

    async def test_another_ca_is_refused_with_code_tls(self):
        url, other = self.server.url, self.other_ca.ca_pem
        with self.assertRaises(mesh.MeshError.Client) as caught:
            await mesh.MeshApi(url, ca_cert_pem=other).login(name(), PASSWORD)
        self.assertEqual(caught.exception.code, "tls", caught.exception)

        auth = await mesh.MeshApi(url, ca_cert_pem=self.ca.ca_pem).register(name(), PASSWORD, None)
        listener = Listener(asyncio.get_running_loop())
        with self.assertRaises(mesh.MeshError.Client) as caught:
            await mesh.connect(url, auth.token, "python-tls", listener, ca_cert_pem=other)
        self.assertEqual(caught.exception.code, "tls", caught.exception)

    async def agent(self, ca_cert_pem, receive_dir=None):
        url = self.server.url
        auth = await mesh.MeshApi(url, ca_cert_pem=self.ca.ca_pem).register(name(), PASSWORD, None)
        loop = asyncio.get_running_loop()
        listener, transfers = Listener(loop), Transfers(loop)
        config = mesh.AgentConfig(
            identity_dir=os.path.join(self.tmpdir(), "identity"),
            receive_dir=receive_dir,
            overwrite=False,
            bind="127.0.0.1:0",
            announce=[],
            device_name="python agent over tls",
            ca_cert_pem=ca_cert_pem,
        )
        agent = await mesh.start_agent(url, auth.token, config, listener, transfers)
        self.addAsyncCleanup(agent.shutdown)
        return agent, transfers

    def tmpdir(self):
        d = tempfile.TemporaryDirectory(prefix="mesh-py-tls-")
        self.addCleanup(d.cleanup)
        return d.name

    async def test_p2p_agents_reach_the_server_with_the_ca_in_their_config(self):
        inbox = self.tmpdir()
        alice, alice_transfers = await self.agent(self.ca.ca_pem)
        bob, bob_transfers = await self.agent(self.ca.ca_pem, receive_dir=inbox)
        room = await alice.client().create_room("tls files", None, False)
        await bob.client().join_room(room.id)
        src = os.path.join(self.tmpdir(), "notes.bin")
        content = os.urandom(64 * 1024 + 3)
        with open(src, "wb") as f:
            f.write(content)
        sent = await alice.send_file(room.id, bob.peer_id(), src, alice_transfers)
        what, report = await bob_transfers.next_done()
        self.assertEqual(what, "received", report)
        self.assertEqual(report.blake3, sent.blake3)
        with open(report.path, "rb") as f:
            self.assertEqual(f.read(), content)

        with self.assertRaises(mesh.MeshError.Client) as caught:
            await self.agent(None)
        self.assertEqual(caught.exception.code, "tls", caught.exception)


if __name__ == "__main__":
    unittest.main()
