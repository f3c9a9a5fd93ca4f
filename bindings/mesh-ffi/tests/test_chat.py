"""The chat scenario through the generated Python binding, against a real
mesh-server on a free port.

Run by scripts/test.sh after bindings/mesh-ffi/generate.sh:

    PYTHONPATH=bindings/mesh-ffi/generated/python \
      MESH_SERVER_BIN=target/debug/mesh-server \
      python3 -m unittest discover -s bindings/mesh-ffi/tests -v
"""

import asyncio
import json
import unittest

import mesh_ffi as mesh

from support import PASSWORD, Listener, Server, name


class ChatTest(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server(
            [
                "--stun-url",
                "stun:turn.mesh.test:3478",
                "--turn-url",
                "turn:turn.mesh.test:3478?transport=udp",
            ]
        )

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

    async def test_rtc_signals_and_role_changes_reach_the_listener(self):
        _, alice, alice_events = await self.connect(name())
        bob_auth, bob, bob_events = await self.connect(name())
        room = await alice.create_room("calls", None, False)
        await bob.join_room(room.id)

        offer = {"sdp": "v=0 (an offer)", "media": ["audio", "video"]}
        alice.send_rtc("offer", room.id, bob.peer_id(), json.dumps(offer))
        got = await bob_events.wait_for(lambda e: e if e.is_rtc() else None)
        self.assertEqual((got.kind, got.room_id), ("offer", room.id))
        self.assertEqual(got.from_peer_id, alice.peer_id())
        self.assertEqual(got.from_user_id, alice.me().id)
        self.assertEqual(json.loads(got.body_json), offer)
        bob.send_rtc("hangup", room.id, alice.peer_id(), "{}")
        got = await alice_events.wait_for(lambda e: e if e.is_rtc() else None)
        self.assertEqual((got.kind, got.from_peer_id), ("hangup", bob.peer_id()))
        with self.assertRaises(mesh.MeshError.Client) as caught:
            alice.send_rtc("offer", room.id, bob.peer_id(), "[1, 2]")
        self.assertEqual(caught.exception.code, "invalid_argument")

        member = await alice.set_role(room.id, bob_auth.user.id, "admin")
        self.assertEqual((member.user.id, member.role), (bob_auth.user.id, "admin"))
        updated = await bob_events.wait_for(
            lambda e: e if e.is_member_updated() else None
        )
        self.assertEqual(
            (updated.room_id, updated.user_id, updated.role),
            (room.id, bob_auth.user.id, "admin"),
        )
        with self.assertRaises(mesh.MeshError.Server) as caught:
            await bob.set_role(room.id, alice.me().id, "member")
        self.assertEqual(caught.exception.code, "forbidden")

    async def test_ice_servers_carry_minted_turn_credentials(self):
        auth, client, _ = await self.connect(name())
        ice = await client.ice_servers()
        self.assertEqual([s.urls for s in ice.ice_servers],
                         [["stun:turn.mesh.test:3478"], ["turn:turn.mesh.test:3478?transport=udp"]])
        self.assertIsNone(ice.ice_servers[0].username)
        turn = ice.ice_servers[1]
        expiry, user_id = turn.username.split(":", 1)
        self.assertEqual(user_id, auth.user.id)
        self.assertEqual(int(expiry) * 1000, ice.expires_at_ms)
        self.assertTrue(turn.credential)

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
